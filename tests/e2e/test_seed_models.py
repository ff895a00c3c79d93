"""The seed team's models through the real command line: SAM2-UNet trains with deep supervision and the
team's loss on the phantom, resumes exactly, predicts (whole image and sliding windows), exports and
fine-tunes with --init-from; each recipe of docs/recipes.md builds, trains a step, predicts and exports."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from util import cli, error_line

ROOT = Path(__file__).resolve().parents[2]
TEAM_LOSS = "0.4*bce+0.4*dice+0.2*focal_tversky@wrist"
RUNTIME = ["--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """`boneseg synth` at 128 px: 3 patients (6 labelled images), 1 test patient."""
    from boneseg.data.synth import synthesize

    root = tmp_path_factory.mktemp("phantom") / "data"
    synthesize(root, patients=3, test_patients=1, size=128, seed=0)
    return root


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sam2unet_end_to_end_on_the_phantom(phantom, tmp_path, capsys):
    sam2 = [
        *("--arch", "sam2unet", "--encoder", "sam2_hiera_tiny", "--encoder-weights", "none", "--size", "128"),
        *("--crop", "64", "--batch-size", "2", "--epochs", "1", "--loss", TEAM_LOSS, "--deep-supervision", "0.5,0.25"),
        *("--norm", "group", "--adapter-dim", "16", "--unfreeze", "1", "--folds", "3"),
    ]
    ref, run = tmp_path / "ref", tmp_path / "run"
    code, _, err = cli(capsys, "train", phantom, *sam2, *RUNTIME, "--out", ref)
    assert code == 0, err
    config = json.loads((ref / "config.json").read_text())
    assert (config["arch"], config["encoder"], config["norm"], config["adapter_dim"], config["unfreeze"]) == (
        "sam2unet",
        "sam2_hiera_tiny",
        "group",
        16,
        1,
    )
    assert config["deep_supervision"] == [0.5, 0.25] and config["loss"] == TEAM_LOSS
    reference = _state(ref / "last.pt")["model"]
    assert "encoder.trunk.blocks.0.attn.qkv.weight" in reference and "side_heads.1.0.weight" in reference

    # stopped after one step, resumed: the same weights as the uninterrupted run
    assert cli(capsys, "train", phantom, *sam2, *RUNTIME, "--max-steps", "1", "--out", run)[0] == 0
    assert cli(capsys, "train", phantom, "--out", run, "--resume", *RUNTIME)[0] == 0
    last = _state(run / "last.pt")
    assert last["step"] == _state(ref / "last.pt")["step"]
    assert all(torch.equal(reference[k], last["model"][k]) for k in reference)

    # predict: whole image at the training size and sliding windows of the crop
    for extra in ([], ["--sliding", "--window", "64", "--overlap", "0.25"]):
        code, _, err = cli(capsys, "predict", phantom, "-m", ref, "-o", tmp_path / "sub.csv", "--force", *extra)
        assert code == 0, err
        assert len((tmp_path / "sub.csv").read_text().splitlines()) == 1 + 2 * 29

    # export: an ONNX graph that predict runs; hf (an smp folder) is refused in one line
    code, _, err = cli(capsys, "export", ref, "--format", "onnx", "-o", tmp_path / "m.onnx")
    assert code == 0, err
    code, _, err = cli(capsys, "predict", phantom, "-m", tmp_path / "m.onnx", "-o", tmp_path / "x.csv", *RUNTIME[:2])
    assert code == 0, err
    code, _, err = cli(capsys, "export", ref, "--format", "hf", "-o", tmp_path / "hf")
    assert code == 2 and "a SAM2-UNet is not a plain smp model" in error_line(err)

    # --init-from the run: every tensor, trunk included
    code, _, err = cli(
        capsys, "train", phantom, *sam2, *RUNTIME, "--max-steps", "1", "--init-from", ref, "--out", tmp_path / "ft"
    )
    assert code == 0 and "initialised from" in err


def test_sam2unet_options_refused_in_one_line(phantom, tmp_path, capsys):
    base = ["train", phantom, "--encoder-weights", "none", "--size", "64", *RUNTIME, "--out", tmp_path / "r"]
    for args, message in (
        (["--arch", "sam2unet", "--encoder", "resnet34"], "--encoder 'resnet34': --arch sam2unet takes a SAM2 Hiera"),
        (["--arch", "unet", "--encoder", "resnet18", "--unfreeze", "2"], "--unfreeze: --arch unet has no"),
        (["--arch", "unet", "--encoder", "resnet18", "--deep-supervision", "1"], "--deep-supervision: --arch unet"),
        (["--arch", "fpn", "--encoder", "resnet18", "--norm", "group"], "--norm group cannot apply to --arch fpn"),
        (["--arch", "sam2", "--encoder", "tiny", "--loss", "dice@wirst"], "@wirst is neither a class nor a group"),
    ):
        code, _, err = cli(capsys, *base, *args)
        assert code == 2 and message in error_line(err), err
        assert not (tmp_path / "r").exists()


# -- the recipes ---------------------------------------------------------------------------------------

TINY_ENCODER = {
    # the recipe's encoder -> the smallest of its family (same code, fewer/narrower blocks): building the
    # full Swin-B/L (88/197 M parameters) or Hiera-L for a 64 px step is minutes of CPU for no more coverage
    "tu-swin_base_patch4_window12_384": "tu-swin_tiny_patch4_window7_224",
    "tu-swin_large_patch4_window12_384": "tu-swin_tiny_patch4_window7_224",
    "sam2_hiera_large": "sam2_hiera_tiny",
    "mit_b5": "mit_b0",
    "tu-hrnet_w48": "tu-hrnet_w18_small",
}
DROP = {"--splits", "--pseudo", "--out", "--encoder-weights", "--epochs", "--batch-size", "--accumulate", "--size"}
DROP |= {"--warmup"}  # in epochs: a warm-up of the real schedule is longer than the one epoch here


def _recipes() -> list[tuple[str, list[str]]]:
    """(heading, argument list) of each `boneseg train` line of the seed team's section of docs/recipes.md."""
    text = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")
    section = text.split("## The seed team's models", 1)[1].split("\n## ", 1)[0]
    variables = dict(re.findall(r"^(\w+)=\"([^\"]*)\"$", section, flags=re.M))
    recipes = []
    for heading, body in re.findall(r"^### (.+?)\n(.*?)(?=^### |\Z)", section, flags=re.S | re.M):
        code = "\n".join(re.findall(r"^```bash\n(.*?)^```", body, flags=re.S | re.M)).replace("\\\n", " ")
        for line in code.splitlines():
            line = re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], line.strip())
            if line.startswith("boneseg train "):
                recipes.append((heading.strip(), shlex.split(line)[3:]))  # after `boneseg train DATA`
    return recipes


RECIPES = _recipes()


def _tiny(args: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(args):
        option, value = args[i], args[i + 1] if i + 1 < len(args) else None
        if option in DROP:
            i += 2
            continue
        if option == "--encoder":
            value = TINY_ENCODER.get(value, value)
        if option == "--crop":
            value = "32"
        out += [option, value] if value is not None and not value.startswith("--") else [option]
        i += 2 if value is not None and not value.startswith("--") else 1
    return out


def test_the_recipes_cover_the_team_table():
    names = " ".join(h for h, _ in RECIPES)
    for model in ("UNet++", "DeepLabV3+", "Swin-B", "Swin-L", "SAM2-UNet", "SegFormer", "HRNet-W48", "nnU-Net"):
        assert model in names, model
    assert all("--out" in args for _, args in RECIPES)


TINY_RECIPES = list({tuple(_tiny(args)): heading for heading, args in RECIPES}.items())
"""Distinct tiny lines (the pseudo-label line is the Swin-B one without its pseudo folder)."""


@pytest.mark.parametrize("args,heading", TINY_RECIPES, ids=[h.split(" ")[0] for _, h in TINY_RECIPES])
def test_each_recipe_trains_predicts_and_exports(heading, args, tmp_path, capsys):
    from util import write_dataset

    data = write_dataset(tmp_path / "data", patients=2, size=64, test_patients=1)
    run = tmp_path / "run"
    line = [*args, "--size", "64", "--epochs", "1", "--batch-size", "2", "--max-steps", "1", "--folds", "2"]
    code, _, err = cli(capsys, "train", data, *line, "--encoder-weights", "none", *RUNTIME, "--out", run)
    assert code == 0, f"{heading}: {err[-2000:]}"
    code, _, err = cli(capsys, "predict", data, "-m", run, "-o", tmp_path / "sub.csv", "--device", "cpu")
    assert code == 0, f"{heading}: {err[-2000:]}"
    code, _, err = cli(capsys, "export", run, "--format", "torchscript", "-o", tmp_path / "m.ts")
    assert code == 0, f"{heading}: {err[-2000:]}"
