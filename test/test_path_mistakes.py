"""Paths users get slightly wrong: a file of a folder given for the folder. Each either means the folder,
or is named as a file with the folder to pass instead; it used to be called a folder that "does not
exist" while it was right there."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_clips import BagSpec, write_bag

from cosmos_ros.clips.cli import main as build_clips
from cosmos_ros.evaluate.runner import EvalError, open_clips
from cosmos_ros.model.adapters import AdapterError, read_card


def test_evaluate_takes_clips_json_for_its_folder_and_names_other_files(tmp_path: Path) -> None:
    write_bag(tmp_path / "bag", BagSpec(duration=1.5))
    clips = tmp_path / "clips"
    args = ["--width", "80", "--height", "64", "--no-progress", "--val-fraction", "0"]
    assert build_clips([str(tmp_path / "bag"), "-o", str(clips), *args]) == 0

    ds = open_clips(str(clips / "clips.json"), "train")
    assert ds.root == clips and len(ds) == 1

    with pytest.raises(EvalError, match=r"tokenizer\.json is a file, not a clips folder; pass the folder"):
        open_clips(str(clips / "tokenizer.json"), "train")
    with pytest.raises(EvalError, match="does not exist; build clips first"):
        open_clips(str(tmp_path / "nowhere"), "train")


def test_adapter_file_given_for_the_adapter_directory(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(AdapterError) as err:
        read_card(weights)
    assert (
        str(err.value)
        == f"{weights} is a file; pass the adapter directory (the folder holding it: {adapter})"
    )
    with pytest.raises(AdapterError, match="does not exist"):
        read_card(tmp_path / "nowhere")
