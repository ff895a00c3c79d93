"""`boneseg report`: the folder it writes, its errors, and the page working in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from util import browse, cli, error_line, write_dataset

from boneseg import CLASSES
from boneseg.data.layout import discover
from boneseg.data.masks import MaskCache, default_cache_dir
from boneseg.submission import SubmissionWriter


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 labelled 64² images, a prediction with per-class errors, a second model, and an audit folder."""
    root = write_dataset(tmp_path_factory.mktemp("report") / "data", patients=2, size=64)
    samples = discover(root, "train")
    cache = MaskCache(default_cache_dir(root))
    truth = np.stack([cache.get(s).masks for s in samples])
    model_a, model_b = truth.copy(), truth.copy()
    model_a[0, 3] = False  # image 0: class 3 missed entirely
    model_a[1, 5] = np.roll(truth[1, 5], 6, axis=1)
    model_b[:, 7] = np.roll(truth[:, 7], 3, axis=0)
    for name, masks in (("a.csv", model_a), ("b.csv", model_b)):
        with SubmissionWriter(root.parent / name) as w:
            for s, m in zip(samples, masks):
                w.write_masks(s.image_name, m)
    audit = root.parent / "audit"
    audit.mkdir()
    (audit / "suspects.csv").write_text(
        "image_name,class,kind,score\n"
        f"{samples[2].image_name},{CLASSES[9]},missing,0.9\n"
        "elsewhere.png,finger-1,shifted,0.5\n"
    )
    return {"root": root, "a": root.parent / "a.csv", "b": root.parent / "b.csv", "audit": audit, "samples": samples}


def page_data(index: Path) -> dict:
    html = index.read_text()
    start = html.index('type="application/json">') + len('type="application/json">')
    return json.loads(html[start : html.index("</script>", start)])


def test_report_folder(data, tmp_path, capsys):
    out = tmp_path / "rep"
    code, _, err = cli(
        capsys, "report", data["a"], data["b"], "--gt", data["root"], "--audit", data["audit"], "-o", out
    )
    assert code == 0, err
    assert f"wrote {out / 'index.html'}" in err
    assert "Warning: 1 audit suspect(s) name images outside the report" in err
    n = len(data["samples"])
    for sub, ext in (("thumbs", "jpg"), ("full", "jpg"), ("masks", "js")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"{i:04d}.{ext}" for i in range(n)]
    page = page_data(out / "index.html")
    assert page["models"] == ["a.csv", "b.csv"] and page["labels"]
    assert page["dice"][0][0][3] == 0.0 and page["dice"][0][0][4] == 1.0 and page["dice"][1][0][3] == 1.0
    assert page["suspects"]["rows"] == [{"image": 2, "class": 9, "kind": "missing", "score": 0.9}]
    assert not any(marker in p.name for p in tmp_path.iterdir() for marker in (".tmp", ".old", ".partial"))
    assert "http" not in (out / "index.html").read_text().replace("http://www.w3.org/2000/svg", "")

    code, _, err = cli(capsys, "report", data["a"], "--gt", data["root"], "-o", out)
    assert code == 1 and "already exists (use --force" in error_line(err)
    code, _, err = cli(capsys, "report", data["a"], "--gt", data["root"], "-o", out, "--force")
    assert code == 0, err
    assert page_data(out / "index.html")["models"] == ["a.csv"]


def test_report_without_labels_uses_images_at_their_own_size(data, tmp_path, capsys):
    """--images gives each image its PNG header's size (as `check --images`): no --size needed."""
    out = tmp_path / "rep"
    code, _, err = cli(capsys, "report", data["a"], "--images", data["root"] / "train" / "DCM", "-o", out)
    assert code == 0, err
    page = page_data(out / "index.html")
    assert not page["labels"] and page["dice"] is None and len(page["images"]) == len(data["samples"])
    assert page["shapes"] == [[64, 64]] * len(data["samples"]) and page["has_images"]
    assert len(list((out / "full").iterdir())) == len(data["samples"])
    code, _, err = cli(capsys, "report", data["a"], "--images", data["root"] / "test" / "DCM", "-o", tmp_path / "x")
    assert code == 1 and "lacks 4 image(s)" in error_line(err)
    assert not (tmp_path / "x").exists()


def test_report_without_images_writes_no_black_pictures(data, tmp_path, capsys):
    out = tmp_path / "rep"
    code, _, err = cli(capsys, "report", data["a"], "--size", 64, "-o", out)
    assert code == 0, err
    assert not (out / "full").exists() and not page_data(out / "index.html")["has_images"]
    assert len(list((out / "thumbs").iterdir())) == len(data["samples"])
    with browse(out / "index.html") as (page, errors, requests):
        page.click('a[data-tab="gallery"]')
        page.locator("#gallery-items .item").first.click()
        renders(page, 1)
        assert page.evaluate(OVERLAY_PIXELS) > 0 and page.locator("#viewer-image").is_hidden()
    assert errors == [] and not any("/full/" in u for u in requests)


NASTY_NAMES = ["<!--<script>x.png", 'a"<script><b onmouseover=alert(1)>.png', "ünï 'q' &amp;.png"]  # no '/': base names


def test_report_page_shows_any_name_as_text(tmp_path, capsys):
    """Image and CSV names holding HTML, script tags and comment openers reach the page as plain text: the
    inlined data keeps no '<' (a "<!--<script>" in it would swallow the page's own script), and the page
    opened in a browser lists every name exactly, without errors."""
    sub = tmp_path / "m<1>&.csv"
    with SubmissionWriter(sub) as w:
        for k, name in enumerate(NASTY_NAMES):
            masks = np.zeros((len(CLASSES), 64, 64), bool)
            masks[:, k : k + 9, 5:20] = True
            w.write_masks(name, masks)
    out = tmp_path / "rep"
    code, _, err = cli(capsys, "report", sub, "--size", 64, "-o", out)
    assert code == 0, err
    html = (out / "index.html").read_text()
    block = html[html.index('type="application/json">') : html.index("</script>")]
    assert "<" not in block.removeprefix('type="application/json">')
    assert page_data(out / "index.html")["images"] == sorted(NASTY_NAMES)
    assert "<title>boneseg report: m&lt;1&gt;&amp;.csv</title>" in html
    with browse(out / "index.html") as (page, errors, _):
        page.click('a[data-tab="gallery"]')
        assert sorted(page.locator("#gallery-items .caption strong").all_inner_texts()) == sorted(NASTY_NAMES)
    assert errors == []


@pytest.mark.parametrize(
    "suspects, message",
    [
        (None, "no suspects.csv in it"),
        ("image_name,class,score\n", "header lacks kind"),
        ("image_name,class,kind,score\nx.png,finger-30,a,1\n", "line 2: unknown class 'finger-30'"),
        ("image_name,class,kind,score\nx.png,finger-3,a,nan\n", "line 2: score 'nan' is not a finite number"),
    ],
)
def test_report_bad_audit(data, tmp_path, capsys, suspects, message):
    audit = tmp_path / "audit"
    audit.mkdir()
    if suspects is not None:
        (audit / "suspects.csv").write_text(suspects)
    code, _, err = cli(capsys, "report", data["a"], "--gt", data["root"], "--audit", audit, "-o", tmp_path / "r")
    assert code == 1 and message in error_line(err)
    assert not (tmp_path / "r").exists()


OVERLAY_PIXELS = (
    "(() => { const c = document.getElementById('viewer-canvas'); "
    "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; "
    "let s = 0; for (let k = 3; k < d.length; k += 4) s += d[k] > 0; return s; })()"
)


def renders(page, n: int) -> None:
    page.wait_for_function(f"document.getElementById('viewer-canvas').dataset.renders >= {n}")


def test_report_in_headless_chromium(data, tmp_path, capsys):
    """The page opens from file://, draws every gallery item, toggling a class changes the overlay, no
    console errors and no request outside the report folder."""
    out = tmp_path / "rep"
    code, _, err = cli(
        capsys, "report", data["a"], data["b"], "--gt", data["root"], "--audit", data["audit"], "-o", out
    )
    assert code == 0, err
    with browse(out / "index.html") as (page, errors, requests):
        page.click('a[data-tab="gallery"]')
        items = page.locator("#gallery-items .item")
        assert items.count() == len(data["samples"])
        # sorted by the worst class of the first model: image 0 (class 3 missed, Dice 0) comes first
        assert items.first.get_attribute("data-index") == "0"
        page.wait_for_function(
            "[...document.querySelectorAll('#gallery-items img')].every(i => i.complete && i.naturalWidth)"
        )
        items.first.click()
        renders(page, 1)
        before = page.evaluate(OVERLAY_PIXELS)
        assert before > 0
        page.locator('#class-list input[data-class="4"]').uncheck()
        renders(page, 2)
        assert 0 < page.evaluate(OVERLAY_PIXELS) < before
        page.click("#classes-none")
        assert page.evaluate(OVERLAY_PIXELS) == 0
        page.select_option("#viewer-mode", "vs1")
        page.click("#classes-all")
        assert page.evaluate(OVERLAY_PIXELS) > 0
        page.click("#zoom-full")
        assert page.locator("#zoom-level").inner_text() == "100 %"
        page.wait_for_function("document.getElementById('viewer-image').naturalWidth == 64")
        page.click("#viewer-close")
        page.click('a[data-tab="suspects"]')
        assert page.locator("#suspects-body tbody tr").count() == 1
        page.click('a[data-tab="disagreement"]')
        assert page.locator("#disagreement-body table").count() == 3
        page.click('a[data-tab="summary"]')
        mean_row = page.locator("#summary-table tfoot tr").first.locator("td").all_inner_texts()
        assert mean_row[0] == "mean" and all(v != "—" for v in mean_row[1:3])
        assert mean_row[3:] == ["—", "—"]  # area ratio and true px have no mean row: a dash, not 0
        page.click('a[data-tab="charts"]')
        charts = page.locator("#chart-list svg")
        assert charts.count() == 3
        for k in range(3):
            chart = charts.nth(k)
            assert chart.locator("line.axis").count() == 2 and chart.locator("text.tick-label").count() >= 3
            assert chart.locator("line.reference").count() == 1  # Dice 1, area ratio 1, agreement 1
        assert charts.nth(0).locator("text.tick-label").all_text_contents()[0] == "0"
        assert "1" in charts.nth(1).locator("text.tick-label").all_text_contents()
        page.click('a[data-tab="gallery"]')
        legend = page.locator("#gallery-legend").inner_text()
        assert "false positive + false negative" in legend
        caption = page.locator("#gallery-items .caption strong").first
        line = page.evaluate("parseFloat(getComputedStyle(document.querySelector('.caption strong')).lineHeight)")
        assert caption.bounding_box()["height"] <= line + 1  # a file name on one line, never broken mid-word
    assert errors == []
    assert requests and all(u.startswith(out.as_uri()) for u in requests), requests


def test_analyze_out_links_the_report(data, tmp_path, capsys):
    out = tmp_path / "analysis"
    code, _, err = cli(capsys, "analyze", data["a"], "--gt", data["root"], "--out", out, "--report")
    assert code == 0, err
    assert (out / "analysis.json").is_file() and str(out / "report" / "index.html") in err.replace("\n", "")
    assert page_data(out / "report" / "index.html")["models"] == ["a.csv"]
    code, _, err = cli(capsys, "analyze", data["a"], "--gt", data["root"], "--report")
    assert code == 2 and "--report writes into --out DIR" in error_line(err)
    code, _, err = cli(capsys, "analyze", data["a"], "--gt", data["root"], "--out", out, "--report")
    assert code == 1 and "already exists (use --force" in error_line(err)


def write_uncertainty(folder: Path, samples, side: int = 64) -> None:
    """A ``predict --save-uncertainty`` folder: image k unsure (entropy (200 + k) / 255) over a patch of class 3."""
    from boneseg import uncertainty

    rows = []
    for k, s in enumerate(samples):
        entropy = np.zeros((len(CLASSES), side, side), np.uint8)
        entropy[3, 10:20, 10:30] = 200 + k
        maps = {"entropy": entropy, "tta": entropy // 2}
        uncertainty.save(folder, s.image_name, maps)
        rows.append((s.image_name, uncertainty.region_means(maps, np.zeros_like(entropy, bool))))
    uncertainty.write_table(folder, rows)
    uncertainty.write_manifest(folder, [s.image_name for s in samples], ["entropy", "tta"])


def test_report_shows_uncertainty(data, tmp_path, capsys):
    """--uncertainty: a heat overlay per image and map (toggled in the viewer) and the per-class table; a folder
    of other images or another size is refused before anything is written."""
    import cv2

    samples = data["samples"]
    write_uncertainty(tmp_path / "u", samples)
    out = tmp_path / "rep"
    code, _, err = cli(capsys, "report", data["a"], "--gt", data["root"], "--uncertainty", tmp_path / "u", "-o", out)
    assert code == 0, err
    n = len(samples)
    assert sorted(p.name for p in (out / "uncertainty").iterdir()) == sorted(
        f"{i:04d}-{m}.png" for i in range(n) for m in ("entropy", "tta")
    )
    heat = cv2.imread(str(out / "uncertainty" / "0000-entropy.png"), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (64, 64, 4) and heat[15, 15, 3] > 128 and heat[40, 40, 3] == 0  # sure pixels transparent
    page = page_data(out / "index.html")
    assert page["uncertainty"]["maps"] == ["entropy", "tta"]
    index = {name: i for i, name in enumerate(page["images"])}
    for k, s in enumerate(samples):
        row = page["uncertainty"]["table"]["entropy"][index[s.image_name]]
        assert row[3] == round((200 + k) / 255, 4) and row[4] == 0.0
    with browse(out / "index.html") as (pg, errors, requests):
        pg.click('a[data-tab="uncertainty"]')
        first = pg.locator("#uncertainty-body table").first.locator("tbody tr").first.locator("td").all_inner_texts()
        assert first[0] == CLASSES[3]
        pg.click('a[data-tab="gallery"]')
        pg.select_option("#gallery-sort", label="most uncertain class (entropy)")
        assert pg.locator("#gallery-items .item").first.get_attribute("data-index") == str(
            index[samples[-1].image_name]
        )
        pg.locator("#gallery-items .item").first.click()
        assert pg.locator("#viewer-heat").is_hidden()
        pg.check("#viewer-heat-on")
        pg.wait_for_function("document.getElementById('viewer-heat').naturalWidth == 64")
        assert pg.locator("#viewer-heat").is_visible()
        pg.select_option("#viewer-heat-map", "tta")
        assert pg.locator("#viewer-heat").get_attribute("src").endswith("-tta.png")
    assert errors == [] and all(u.startswith(out.as_uri()) for u in requests)

    write_uncertainty(tmp_path / "few", samples[:2])
    code, _, err = cli(
        capsys, "report", data["a"], "--gt", data["root"], "--uncertainty", tmp_path / "few", "-o", tmp_path / "x"
    )
    assert code == 1 and "no row for image" in error_line(err)
    write_uncertainty(tmp_path / "big", samples, side=32)
    code, _, err = cli(
        capsys, "report", data["a"], "--gt", data["root"], "--uncertainty", tmp_path / "big", "-o", tmp_path / "x"
    )
    assert code == 1 and "is 32x32, the image is 64x64" in error_line(err)
    code, _, err = cli(
        capsys, "report", data["a"], "--gt", data["root"], "--uncertainty", data["audit"], "-o", tmp_path / "x"
    )
    assert code == 1 and "uncertainty.json" in error_line(err)
    assert not (tmp_path / "x").exists()
