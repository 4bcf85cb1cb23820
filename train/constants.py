"""Names a run's folder holds, shared by the trainer's parts."""

CHECKPOINT = "checkpoint.pt"
# what a run writes into its folder besides config.yaml / split.json (rewritten at its start)
SELECTION_SCORES = "selection_scores.npz"  # the selected epoch's selection-split logits (calibration)
RUN_OUTPUTS = ("model", "model_stage1", "metrics.csv", "metrics.json", CHECKPOINT, CHECKPOINT + ".tmp",
               "eval.json", "eval_scores.npz", SELECTION_SCORES, "tensorboard")
LOG_EVERY = 20  # steps between progress-bar updates (each reads the loss from the device)
