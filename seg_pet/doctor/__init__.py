"""The `doctor` command: checks of the data, model and loss wiring before any real training.

checks  each check a small function returning a `CheckResult`, testable on deliberately broken
        tensors and tiny models without the CLI
run     `run_doctor`: the checks on the configured pipeline, and the report
"""
