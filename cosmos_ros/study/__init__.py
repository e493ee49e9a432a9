"""The adaptation study (docs/adaptation.md): does fine-tuning the sim twin on a cell it never saw make a
better twin of that cell, and at what cost? LoRA and DoRA at several ranks, full fine-tuning and no
adaptation, on three target cells, with 1 to 30 training episodes and two seeds.

Modules, one job each:

- `config`: config/adaptation_study.yaml -> rows (cell, method, rank, episodes, seed) and one step/LR policy
  per method;
- `data`: the episodes and clips every row needs (the target cells' training and held-out episodes, the
  twin's own held-out cells), made once per work folder;
- `curves`: the val-loss curve of a run against its training seconds: step time, time to 90% of the gain;
- `row`: one row end to end (train, evaluate on the new cell and on the original cells) -> one JSON;
- `run`: the one-row command (``python -m cosmos_ros.study.run --row ID``);
- `plan`: GPU-minutes per row and the batches of at most 25 GPU-minutes;
- `batch`: runs a list of rows (a planned batch), one process per row, on every GPU;
- `stats`: intervals over seeds and clips, paired across runs on the same clips;
- `report`: the results folder -> docs/adaptation.md (tables, plots, raw JSON beside it).
"""
