"""The run format, one owner below training and inference: a run's config (`config`: the schema, the resume
policy, config files and the command-line merge in `config_file`), the files of a run folder (`files`),
checkpoints (`checkpoint`) and a run opened once for reading (`run.Run`)."""
