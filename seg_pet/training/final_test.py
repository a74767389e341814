"""The end of a run: the selected checkpoint (best.pt) on the test split, once (`test_once`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seg_pet.checkpoint import load_checkpoint, load_model_weights
from seg_pet.config import Config
from seg_pet.data.segmentation import SegmentationDataset
from seg_pet.evaluation import evaluate_split, format_groups, write_details, write_test_outputs
from seg_pet.metrics import format_table
from seg_pet.runtime.device import Runtime
from seg_pet.runtime.distributed import broadcast_from_main, decided_by_main, is_main
from seg_pet.runtime.runpaths import RunPaths
from seg_pet.runtime.signals import signals_raise
from seg_pet.testlog import LOG_NAME, earlier_looks, record_test_evaluation
from seg_pet.training.guard import saved_note


def test_once(
    model, test_set: SegmentationDataset, cfg: Config, runtime: Runtime, names: list[str], log: Callable[[str], None]
) -> dict[str, Any]:
    """The test split is touched once: the best checkpoint, after the last epoch.

    Under torchrun rank 0 reads best.pt and hands its weights to the others (no process but rank 0
    needs the run folder), each process scores its share of the test images, and rank 0 writes."""
    paths, master_process = RunPaths(cfg.run_dir), is_main()
    if decided_by_main(paths.test_metrics.exists()):
        log(f"{paths.test_metrics.name} already exists in {paths.root}; not evaluating the test split again")
        return {}
    when = "during the final test evaluation (every epoch is saved; resuming runs only the test evaluation)"
    with signals_raise(f"{when}; {saved_note(paths, cfg.optim.epochs)}"):
        best_epoch = None
        earlier = []
        if master_process:
            best_state = load_checkpoint(paths.best)
            load_model_weights(model, best_state, paths.best, names)
            best_epoch = best_state["epoch"]
            earlier = earlier_looks(paths.root, cfg, cfg)
        broadcast_from_main(model.state_dict().values())
        test_metrics = evaluate_split(model, test_set, cfg, runtime, names, desc="test", per_image=True)
        test_metrics = {
            "split": "test",
            "checkpoint": "best",
            "checkpoint_epoch": decided_by_main(best_epoch),
            "earlier_test_evaluations": len(earlier),
            **test_metrics,
        }
        if master_process:
            record_test_evaluation(paths.root, cfg, command="train", checkpoint=paths.best, epoch=best_epoch, forced=False)
            write_details(paths.root, test_set, test_metrics, model, cfg, runtime, names)
            write_test_outputs(paths.root, test_metrics, names)  # atomic files, test_metrics.json last
    if earlier:
        log(f"\nnote: this test set was evaluated {len(earlier)} time(s) before this final evaluation ({LOG_NAME})")
    log(f"\ntest split, best checkpoint (epoch {test_metrics['checkpoint_epoch']}), {test_metrics['num_images']} images:")
    log(format_table(test_metrics, names))
    if test_metrics.get("groups"):
        log(format_groups(test_metrics["groups"], names))
    return {k: v for k, v in test_metrics.items() if k != "per_image"} if master_process else {}
