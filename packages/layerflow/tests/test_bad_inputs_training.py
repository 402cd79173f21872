"""Bad inputs and damaged files on the training side: each is a one-line error naming the problem
(exit 2 from ``layerflow train``, before training starts, nothing left behind), a safe fallback, or
correct behaviour. One test per input of the catalogue (issue 15, items 2-4 and 6-8; issue 14, item 6).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layerflow.data import (
    CachedLayerDataset,
    FrameSampler,
    OfficialLayoutDataset,
    Preprocess,
    SampleError,
    SimpleLayoutDataset,
    StaleCacheError,
)
from layerflow.data.testing import write_official, write_simple_sample
from layerflow.testing import hold_lock_elsewhere
from layerflow.training import checkpointing as ckpt
from layerflow.training.config import ConfigError, config_json, load_config
from layerflow.training.output_dir import OutputInUseError
from layerflow.training.testing import train_tiny
from layerflow.training.trainer import TrainResult


# ------------------------------------------------------------------------------------ helpers
def layerflow_train(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``layerflow train ARGS`` in a fresh interpreter, as a user runs it."""
    script = shutil.which("layerflow")
    command = [script] if script else [sys.executable, "-m", "layerflow"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*command, "train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    stderr = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, stderr)
    assert "Traceback" not in stderr and "\n" not in stderr, stderr
    assert stderr.startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)
    return stderr


def tree(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time: what a refused command must not change."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


run = train_tiny  # a tiny stage-1 run into root/name, cache shared in root/cache


SHORT = {"run": {"max_steps": 6, "checkpoint_every": 2}}


# ------------------------------------------------------------------- config errors (CLI, exit 2)
@pytest.mark.slow
def test_set_without_equals_is_a_one_line_error(tmp_path: Path) -> None:
    result = layerflow_train(
        "--stage", "1", "--set", "optim.batch_size", "--output-root", "out", cwd=tmp_path
    )
    assert_one_line_error(result, "'optim.batch_size'", "section.key=value")
    assert list(tmp_path.iterdir()) == []


#: Each training option past its range: the one-line error names the dotted key and the range.
OUT_OF_RANGE = [
    ("--max-steps", "0", "run.max_steps must be in [1, 10000000], got 0"),
    ("--max-steps", "100000000", "run.max_steps must be in [1, 10000000], got 100000000"),
    ("--set", "run.checkpoint_every=0", "run.checkpoint_every must be in [1, 10000000], got 0"),
    ("--set", "run.keep_checkpoints=0", "run.keep_checkpoints must be in [1, 10000], got 0"),
    ("--set", "run.seed=-1", "run.seed must be in [0, 9223372036854775807], got -1"),
    ("--set", "run.num_threads=5000", "run.num_threads must be in [1, 1024], got 5000"),
    ("--set", "run.ema_decay=1.0", "run.ema_decay must be in (0, 1), got 1.0"),
    ("--set", "optim.learning_rate=10", "optim.learning_rate must be in (0, 1], got 10.0"),
    ("--set", "optim.learning_rate=0", "optim.learning_rate must be in (0, 1], got 0.0"),
    ("--set", "optim.adam_epsilon=-1e-8", "optim.adam_epsilon must be in (0, 1], got -1e-08"),
    ("--set", "optim.batch_size=100000", "optim.batch_size must be in [1, 4096], got 100000"),
    ("--set", "optim.lr_warmup_steps=-1", "optim.lr_warmup_steps must be in [0, 10000000], got -1"),
    ("--set", "data.num_frames=100000", "data.num_frames must be in [1, 1024], got 100000"),
    ("--set", "data.height=0", "data.height must be in [1, 8192], got 0"),
    ("--set", "data.num_workers=100000", "data.num_workers must be in [0, 256], got 100000"),
    ("--set", "data.sources=[{repeat=0}]", "data.sources[0].repeat must be in [1, 10000], got 0"),
    ("--set", "model.content_rank=100000", "model.content_rank must be in [1, 4096], got 100000"),
    ("--set", "objective.text_dropout=1.0", "objective.text_dropout must be in [0, 1), got 1.0"),
]


@pytest.mark.parametrize(("flag", "value", "message"), OUT_OF_RANGE, ids=[v for _, v, _ in OUT_OF_RANGE])
def test_every_training_number_has_a_range(
    tmp_path: Path, capsys, flag: str, value: str, message: str
) -> None:
    """Checked with the config, before any model is built or anything is written."""
    from layerflow.training import main as train_main

    assert train_main(["--stage", "1", flag, value, "--output-root", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n", err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("[optim]\nlearning_rate = nan\n", "optim.learning_rate must be a finite number, got nan"),
        ("[optim]\nlearning_rate = inf\n", "optim.learning_rate must be a finite number, got inf"),
        (
            "[data]\nheight = 30\nwidth = 32\nnum_frames = 8\n",
            "data.height=30 must be a positive multiple of",
        ),
        ("[data]\nheight = 32\nwidth = 32\nnum_frames = 7\n", "data.num_frames=7 per clip does not survive"),
    ],
    ids=["lr-nan", "lr-inf", "height-30", "num-frames-7"],
)
def test_bad_config_values_name_the_dotted_key(tmp_path: Path, content: str, named: str) -> None:
    """nan/inf learning rates and geometry the pipeline refuses (the pipeline's own rule) stop before training."""
    (tmp_path / "bad.toml").write_text(content)
    result = layerflow_train("--stage", "1", "--config", "bad.toml", "--output-root", "out", cwd=tmp_path)
    assert_one_line_error(result, named)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]  # no output root, no data, no cache


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "content"),
    [("bad.yaml", "data:\n  height: [32\n  width: 32\n"), ("bad.toml", "[data]\nheight = [32\nwidth = 32\n")],
)
def test_malformed_yaml_and_toml_give_the_same_clear_error(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content)
    result = layerflow_train("--stage", "1", "--config", name, "--output-root", "out", cwd=tmp_path)
    kind = name.rsplit(".", 1)[1].upper()
    assert_one_line_error(result, f"config file {name} is not valid {kind}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_yaml_per_stage_tables_with_integer_keys_are_honoured(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "optim:\n  batch_size: 2\nstage:\n  2:\n    optim:\n      batch_size: 3\n      learning_rate: 0.5\n"
    )
    assert load_config(tmp_path / "c.yaml", 2).optim.batch_size == 3
    assert load_config(tmp_path / "c.yaml", 2).learning_rate == 0.5
    assert load_config(tmp_path / "c.yaml", 1).optim.batch_size == 2
    (tmp_path / "twice.yaml").write_text(
        "stage:\n  2: {optim: {batch_size: 3}}\n  '2': {optim: {batch_size: 4}}\n"
    )
    with pytest.raises(ConfigError, match="given twice"):
        load_config(tmp_path / "twice.yaml", 2)


# ------------------------------------------------------------------------------ output folders
@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult, dict[str, torch.Tensor]]:
    """A finished 6-step run in ``root/full`` (checkpoints 2, 4, 6, final/); tests work beside it in ``root``,
    sharing its synthetic data and cache."""
    root = tmp_path_factory.mktemp("full")
    result = run(root, "full", SHORT)
    return root, result, load_file(str(root / "full" / "final" / "trained.safetensors"))


@pytest.mark.slow
def test_a_new_run_in_a_used_output_folder_is_refused(full_run, tmp_path: Path) -> None:
    output = full_run[0] / "full"
    before = tree(output)
    result = layerflow_train("--stage", "1", "--set", f"run.output_dir={str(output)!r}", cwd=tmp_path)
    assert_one_line_error(result, f"{output} holds a previous training run", "--resume", "--overwrite")
    assert tree(output) == before  # nothing written, nothing removed


def test_overwrite_replaces_only_the_previous_training_output(tmp_path: Path) -> None:
    first = run(tmp_path, "out", {"run": {"max_steps": 4, "checkpoint_every": 2}})
    output = tmp_path / "out"
    (output / "notes.txt").write_text("mine")
    (output / "mydata").mkdir()
    (output / "mydata" / "clip.png").write_bytes(b"x")
    with pytest.raises(OutputInUseError, match="--resume to continue it or --overwrite"):
        run(tmp_path, "out", {"run": {"max_steps": 2}})
    second = run(tmp_path, "out", {"run": {"max_steps": 2, "checkpoint_every": 1}}, overwrite=True)
    assert [p.name for p in ckpt.complete_checkpoints(output)] == ["checkpoint-1", "checkpoint-2"]
    assert second.losses == first.losses[:2]  # a fresh run from step 0, not a continuation
    assert (output / "notes.txt").read_text() == "mine" and (output / "mydata" / "clip.png").is_file()
    state = ckpt.read_checkpoint(output / "checkpoints" / "checkpoint-2", 0)[0].state
    assert state["losses"] == second.losses


def test_pruning_never_removes_checkpoints_newer_than_the_one_written(tmp_path: Path) -> None:
    for step in (5, 10, 20):  # 10 and 20: another run's; 5: the one just written
        folder = ckpt.checkpoint_dir(tmp_path, step)
        folder.mkdir(parents=True)
        (folder / ckpt.STATE).write_text("{}")
    ckpt.prune(tmp_path, keep=1, step=5)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == [
        "checkpoint-5",
        "checkpoint-10",
        "checkpoint-20",
    ]


# ------------------------------------------------------------------------------- resume
def first_file(checkpoint: Path, name: str) -> Path:
    """``name`` in a checkpoint, or the first tensor shard when ``name`` is its tensors folder."""
    path = checkpoint / name
    return sorted(path.glob("*.safetensors"))[0] if path.is_dir() else path


def damage(path: Path) -> None:
    """Truncate a file to half its size (a disk that filled up, a copy cut short)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["tensors", "state.json"])
def test_resume_falls_back_from_a_damaged_latest_checkpoint(
    full_run: tuple[Path, TrainResult, dict[str, torch.Tensor]],
    tmp_path: Path,
    damaged: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, full, trained = full_run
    output = root / f"damaged-{damaged}"
    shutil.copytree(root / "full", output)
    shutil.rmtree(output / "final")
    damage(first_file(output / "checkpoints" / "checkpoint-6", damaged))
    with caplog.at_level(logging.WARNING):
        resumed = run(root, output.name, SHORT, resume=True)
    assert "skipping checkpoint checkpoint-6" in caplog.text and damaged in caplog.text
    assert resumed.losses == full.losses  # steps 5 and 6 retrained from checkpoint-4, bit-identical
    again = load_file(str(output / "final" / "trained.safetensors"))
    assert again.keys() == trained.keys() and all(torch.equal(again[k], trained[k]) for k in trained)
    ckpt.read_checkpoint(output / "checkpoints" / "checkpoint-6", 0)  # rewritten whole


@pytest.mark.slow
def test_resume_with_every_checkpoint_damaged_names_them(full_run) -> None:
    root = full_run[0]
    shutil.copytree(root / "full", root / "all-damaged")
    for path in ckpt.complete_checkpoints(root / "all-damaged"):
        damage(first_file(path, "tensors"))
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint of .* reads completely: .*checkpoint-2"):
        run(root, "all-damaged", SHORT, resume=True)


@pytest.mark.slow
def test_resume_from_an_older_checkpoint_refuses_to_mix_with_newer_ones(full_run) -> None:
    root = full_run[0]
    shutil.copytree(root / "full", root / "older")
    before = tree(root / "older")
    with pytest.raises(ckpt.CheckpointError, match=r"newer checkpoints \['checkpoint-4', 'checkpoint-6'\]"):
        run(root, "older", SHORT, resume=root / "older" / "checkpoints" / "checkpoint-2")
    assert tree(root / "older") == before


@pytest.mark.slow
def test_resume_from_a_missing_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    result = layerflow_train("--stage", "1", "--resume", "/nonexistent", "--output-root", "out", cwd=tmp_path)
    assert_one_line_error(result, "--resume /nonexistent: no such checkpoint folder")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- precompute cache
@pytest.mark.slow
@pytest.mark.parametrize("how", ["zeroed", "truncated"])
def test_a_damaged_cache_shard_is_rebuilt_and_training_matches_the_clean_cache(
    full_run, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The run of ``full_run`` trained on this cache clean; a new run on it after the damage matches."""
    root, full, _ = full_run
    (cache,) = [p for p in (root / "cache").iterdir() if (p / "manifest.json").is_file()]
    shard = sorted(cache.glob("shard-*.safetensors"))[0]
    original = shard.read_bytes()
    shard.write_bytes(bytes(len(original)) if how == "zeroed" else original[: len(original) // 2])
    with pytest.raises(StaleCacheError, match=f"shard {shard.name} is damaged"):
        CachedLayerDataset(cache)  # opening the cache directly verifies it too
    with caplog.at_level(logging.WARNING):
        rebuilt = run(root, f"after-{how}", SHORT)
    assert f"shard {shard.name} is damaged" in caplog.text
    assert shard.read_bytes() == original  # re-encoded exactly
    assert rebuilt.losses == full.losses


# ------------------------------------------------------------------------------- dataset validation
@pytest.mark.parametrize("layout", ["simple", "official"])
def test_validate_reads_every_frame_not_only_the_first_window(tmp_path: Path, layout: str) -> None:
    preprocess = Preprocess(height=24, width=32, frames=FrameSampler(num_frames=4, start="first"))
    if layout == "simple":
        write_simple_sample(tmp_path, "a", 12)
        corrupt, reader = tmp_path / "a" / "background" / "0010.png", SimpleLayoutDataset
    else:
        write_official(tmp_path, "davis", {"a": 12})
        corrupt, reader = tmp_path / "a" / "bg" / "0010.png", OfficialLayoutDataset
    corrupt.write_bytes(b"corrupt")  # outside the epoch window, frames 0-3
    dataset = reader(tmp_path, preprocess)
    dataset.load_sample(0)  # the epoch window alone reads fine
    with pytest.raises(SampleError, match=f"sample 'a': cannot read frame {corrupt}"):
        dataset.validate(progress=False)


def test_config_json_round_trips_as_the_previous_run_marker(tmp_path: Path) -> None:
    """The output-folder check recognises the config.json the trainer writes (and nothing else)."""
    from layerflow.training.output_dir import previous_run as found

    (tmp_path / "config.json").write_text('{"unrelated": true}')
    assert found(tmp_path) == []
    (tmp_path / "config.json").write_text(config_json(load_config(None, 1)))
    assert found(tmp_path) == [tmp_path / "config.json"]


def test_a_second_training_into_one_root_is_refused(tmp_path: Path) -> None:
    holder = hold_lock_elsewhere(tmp_path / "out")
    try:
        result = layerflow_train("--stage", "1", "--output-root", "out", "--max-steps", "1", cwd=tmp_path)
    finally:
        holder.communicate("")
    assert_one_line_error(result, "out is being written by layerflow process", str(holder.pid))
    assert not (tmp_path / "out").exists()


def test_resume_with_changed_settings_is_refused_unless_allowed(tmp_path: Path, caplog) -> None:
    first = {"run": {"max_steps": 2, "checkpoint_every": 2}}
    train_tiny(tmp_path, "run", first)
    config_file = tmp_path / "run" / "config.json"
    written = config_file.read_bytes()
    changed = {"run": {"max_steps": 3, "checkpoint_every": 2}, "optim": {"learning_rate": 0.5}}
    with pytest.raises(ckpt.CheckpointError, match=r"optim.learning_rate: .* -> 0.5\): pass --allow-changes"):
        train_tiny(tmp_path, "run", changed, resume=True)
    assert config_file.read_bytes() == written
    train_tiny(tmp_path, "run", {"run": {"max_steps": 3, "checkpoint_every": 2}}, resume=True)  # only longer
    with caplog.at_level(logging.WARNING):
        result = train_tiny(
            tmp_path, "run", changed | {"run": {"max_steps": 4}}, resume=True, allow_changes=True
        )
    assert len(result.losses) == 4 and "optim.learning_rate" in caplog.text
    assert config_file.read_bytes() == written  # the first config stays


# ------------------------------------------------------------------------------------ data failures, Ctrl-C
def _last_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, no traceback, the last stderr line the error (INFO progress lines may precede it)."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(f in last for f in fragments), last
    return last


def test_a_corrupt_frame_mid_dataset_names_the_sample_and_blocks_no_rerun(tmp_path: Path) -> None:
    from layerflow.training.output_dir import previous_run

    for index in range(4):
        write_simple_sample(tmp_path / "data", f"s{index}", 16, seed=index, size=(32, 48))
    (tmp_path / "data" / "s2" / "foreground" / "0003.png").write_text("not a png")
    sources = 'data.sources=[{kind="simple", root="data"}]'
    result = layerflow_train(
        "--stage", "1", "--output-root", "out", "--max-steps", "2", "--no-progress",
        "--set", sources, "--set", "data.precompute=false", cwd=tmp_path,
    )  # fmt: skip
    _last_line_error(result, "sample 's2'", "s2/foreground/0003.png")
    assert previous_run(tmp_path / "out" / "stage1") == []


def test_an_empty_dataset_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    sources = 'data.sources=[{kind="simple", root="empty"}]'
    result = layerflow_train("--stage", "1", "--output-root", "out", "--set", sources, cwd=tmp_path)
    _last_line_error(result, "found no usable samples in empty")


def _missing_root(root: Path) -> str:
    return f"data.sources[0].root: {root / 'nothere'} does not exist"


def _bad_meta(root: Path) -> str:
    write_official(root / "off", "davis", {"a": 8})
    meta = next((root / "off").glob("*.json"))
    meta.write_text("{bad")
    return f"data.sources[0] (kind='official'): {meta} is not valid JSON"


def _fifo_prompts(root: Path) -> str:
    write_simple_sample(root / "simple", "s0", 8)
    (root / "simple" / "s0" / "prompts.json").unlink()
    os.mkfifo(root / "simple" / "s0" / "prompts.json")
    return f"sample 's0': {root / 'simple' / 's0' / 'prompts.json'} is a FIFO, not a JSON file"


DATA_SOURCE_DAMAGE = {
    "missing root": ("simple", "nothere", _missing_root),
    "official meta not JSON": ("official", "off", _bad_meta),
    "prompts.json a FIFO": ("simple", "simple", _fifo_prompts),
}


@pytest.mark.parametrize("damage", DATA_SOURCE_DAMAGE)
def test_a_bad_data_source_is_one_line_and_blocks_no_rerun(tmp_path: Path, capsys, damage: str) -> None:
    """Never a traceback, never a hang on a FIFO; the missing root is found before any model loads."""
    from layerflow.training import main as train_main

    kind, folder, make = DATA_SOURCE_DAMAGE[damage]
    message = make(tmp_path)
    sources = f'data.sources=[{{kind="{kind}", root="{tmp_path / folder}"}}]'
    size = ["--set", "data.height=16", "--set", "data.width=16", "--set", "data.num_frames=8"]
    signal.alarm(60)  # a FIFO opened for reading blocks: fail instead of hanging
    try:
        argv = [
            "--stage",
            "1",
            "--output-root",
            str(tmp_path / "out"),
            "--no-progress",
            "--set",
            sources,
            *size,
        ]
        assert train_main(argv) == 2
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "stage1" / "config.json").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_ctrl_c_says_how_to_resume(tmp_path: Path, workers: int) -> None:
    script = shutil.which("layerflow")
    command = [script] if script else [sys.executable, "-m", "layerflow"]
    argv = [*command, "train", "--stage", "1", "--output-root", "out", "--no-progress"]
    argv += [
        "--max-steps",
        "100000",
        "--set",
        "run.checkpoint_every=2",
        "--set",
        f"data.num_workers={workers}",
    ]
    # Ctrl-C reaches a terminal's foreground job with SIGINT at its default disposition; a test run
    # launched in the background (``cmd &`` in a script) inherits SIGINT ignored, so restore it.
    run = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoints = tmp_path / "out" / "stage1" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints.is_dir() and ckpt.complete_checkpoints(checkpoints.parent)):
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130 and "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    newest = ckpt.latest_checkpoint(checkpoints.parent)
    assert newest is not None
    assert (
        last
        == f"error: interrupted: run the same command with --resume to continue from {newest.relative_to(tmp_path)}"
    ), last


def test_an_interrupt_inside_a_step_waits_for_its_end_and_a_second_one_does_not() -> None:
    from layerflow.training.interrupt import deferred_interrupt

    # SIGINT as a terminal's foreground job has it (a run launched with ``&`` inherits it ignored,
    # and then Ctrl-C never reaches it: deferral changes nothing there).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with deferred_interrupt() as stop_requested:
            assert not stop_requested()
            os.kill(os.getpid(), signal.SIGINT)  # e.g. inside a safetensors read: nothing is raised there
            time.sleep(0.05)
            assert stop_requested()
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with deferred_interrupt() as stop_requested:  # an ignored SIGINT stays ignored
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert not stop_requested()
    finally:
        signal.signal(signal.SIGINT, inherited)
