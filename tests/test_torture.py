"""Torture cases: kills at every write of a training run, two writers, bad settings, malformed
checkpoints, a full disk, huge images, models that output NaN. Each case asserts what the user sees:
one line and exit code 2, or the files an uninterrupted run would have written, byte for byte."""

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import types
import zlib
from pathlib import Path

import pytest
import torch

from xviz.checkpoint import read_checkpoint, save_checkpoint
from xviz.errors import XvizError
from xviz.train import loop, run_folder

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "plugins" / "xviz_zoo" / "assets" / "samples"
# three epochs of the demo CNN on 48 synthetic images; best.pt is written twice, epoch 1's checkpoint pruned
RUN = ["train", "--model", "xviz-demo", "--dataset", "synthetic", "--dataset-options", "size=48", "--epochs", "3",
       "--batch-size", "16", "--augment", "flip,crop", "--keep", "2", "--workers", "0", "--out", "run"]

# `xviz ARGS` killed (-9) at the KILL_AT-th step of the run folder's writes; history's `seconds` fixed
# so that runs compare byte for byte
DRIVER = textwrap.dedent("""
    import os, signal, sys, types
    from xviz.train import loop, run_folder
    steps = []

    def fault(step, path):
        steps.append(step)
        if len(steps) == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)

    run_folder.FAULT = fault
    loop.time = types.SimpleNamespace(time=lambda: 0.0)
    from xviz.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def assert_one_line(code, err, *fragments):
    """Exit code 2 and one ``xviz: error:`` line on stderr (besides progress bars), holding ``fragments``."""
    errors = re.findall(r"xviz: error: [^\r\n]*", err)
    rest = re.sub(r"xviz: error: [^\r\n]*", "", err)
    bars = re.sub(r"[^\r\n]*\d+/\d+ \[[^\r\n]*\]|explaining layer[^\r\n]*", "", rest)  # tqdm and the layer note
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and not bars.strip(), err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def restore(files: dict[str, bytes], folder: Path) -> Path:
    """Write a :func:`snapshot` back into ``folder``."""
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def xviz(cwd: Path, *args, env=None, timeout=300):
    """Run the driver in a fresh process in ``cwd``."""
    driver = cwd / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.run([sys.executable, str(driver), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (its files) and the list of write steps it went through."""
    from xviz.cli import main

    cwd, steps = tmp_path_factory.mktemp("reference"), []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(loop, "time", types.SimpleNamespace(time=lambda: 0.0))
        mp.setattr(run_folder, "FAULT", lambda step, path: steps.append(f"{step} {path.as_posix()}"))
        assert main(RUN) == 0
    return snapshot(cwd / "run"), steps


@pytest.fixture
def resume(monkeypatch, capsys):
    """``resume(folder)``: ``xviz train --resume run`` in ``folder`` (in this process); returns stdout."""
    from xviz.cli import main

    def run(folder, argv=("train", "--resume", "run")):
        monkeypatch.chdir(folder)
        monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: 0.0))
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert code == 0, err
        return out
    return run


def kill(cwd: Path, point: int) -> Path:
    """Run the reference run in a new process in ``cwd``, killed (-9) at write step ``point``."""
    proc = xviz(cwd, *RUN, env={"KILL_AT": str(point)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return cwd / "run"


# --- 1. a kill at any write, then --resume: the files of an uninterrupted run ----------------------

def test_the_reference_run_steps_through_every_write(reference):
    files, steps = reference
    assert set(files) == {"best.pt", "last.pt", "history.json", "history.csv", "manifest.json",
                          "checkpoints/epoch-0002.pt", "checkpoints/epoch-0003.pt"}
    history = json.loads(files["history.json"])
    improved = [row["epoch"] for i, row in enumerate(history)
                if all(row["test_acc"] > before["test_acc"] for before in history[:i])]
    assert improved[0] == 1 and len(improved) >= 2  # best.pt is written more than once
    expected = ["manifest.json"]
    for epoch in (1, 2, 3):
        expected += [f"checkpoints/epoch-{epoch:04d}.pt", "last.pt", *(["best.pt"] if epoch in improved else []),
                     "history.json", "history.csv", "manifest.json"]
    assert [s.split()[1].removeprefix("run/") for s in steps if s.startswith("replaced")] == expected
    assert steps[-1] == "removed run/checkpoints/epoch-0001.pt"
    manifest = json.loads(files["manifest.json"])
    assert manifest["epoch"] == 3 and manifest["best"] == {"epoch": improved[-1],
                                                           "test_acc": history[improved[-1] - 1]["test_acc"]}
    assert manifest["files"] == {n: hashlib.sha256(d).hexdigest() for n, d in files.items() if n != "manifest.json"}


def _point(steps, step, name, nth=-1):
    """The 1-based index of the ``nth`` step ``step`` of the write of ``name``."""
    return [i for i, s in enumerate(steps, 1) if s == f"{step} run/{name}"][nth]


@pytest.mark.parametrize("step, name", [
    ("partial", "best.pt"),  # inside the last best.pt write: it would keep epoch 1's worse model
    ("written", "last.pt"),  # inside the final last.pt: it and the history would stay an epoch behind
])
def test_a_kill_inside_a_write_then_resume_equals_an_uninterrupted_run(reference, tmp_path, resume, step, name):
    files, steps = reference
    run = kill(tmp_path, _point(steps, step, name))
    assert f"repaired {name}" in resume(tmp_path)
    assert snapshot(run) == files


@pytest.mark.slow
def test_a_kill_at_every_write_then_resume_equals_an_uninterrupted_run(reference, tmp_path, resume):
    """Before the run's first manifest is in place there is nothing to resume: resume says so and the
    same command started again writes the run; from then on --resume ends as the uninterrupted run."""
    files, steps = reference
    started = steps.index("replaced run/manifest.json") + 1
    lost = []
    for point in range(1, len(steps) + 1):
        cwd = tmp_path / f"kill-{point}"
        cwd.mkdir()
        run = kill(cwd, point)
        if point < started:
            with pytest.raises(AssertionError, match="nothing to resume in `run`: it holds no checkpoint"):
                resume(cwd)
            resume(cwd, RUN)
        else:
            resume(cwd)
        if snapshot(run) != files:
            lost.append(steps[point - 1])
    print(f"kill points tried {len(steps)}, equal to the uninterrupted run {len(steps) - len(lost)}")
    assert not lost


def test_a_truncated_last_pt_and_leftover_temporaries_are_repaired(reference, tmp_path, resume):
    files, _ = reference
    run = restore(files, tmp_path / "run")
    (run / "last.pt").write_bytes(files["last.pt"][:1000])
    (run / "best.pt").write_bytes(files["checkpoints/epoch-0002.pt"])  # a wrong model in best.pt
    (run / "history.json").write_text("[]")
    for leftover in (".best.pt.k2j4.pt", ".last.pt.x9.pt", ".history.json.a1.json", "checkpoints/.epoch-0004.pt.z.pt"):
        (run / leftover).write_bytes(b"half")
    out = resume(tmp_path)
    assert "repaired last.pt, best.pt, history.json in `run` from checkpoints/epoch-0003.pt" in out
    assert "already finished: 3/3 epochs" in out
    assert snapshot(run) == files


@pytest.mark.slow  # also one of the kill points above
def test_resume_of_a_run_killed_before_its_first_epoch_starts_it_again(reference, tmp_path, resume):
    files, steps = reference
    run = kill(tmp_path, _point(steps, "partial", "checkpoints/epoch-0001.pt"))
    resume(tmp_path)
    assert snapshot(run) == files


# --- 2. one writer per run folder -----------------------------------------------------------------

HOLDER = "from xviz.train.run_folder import RunFolder; import sys, time; RunFolder(sys.argv[1]).lock(); " \
         "print('locked', flush=True); time.sleep(120)"


def test_a_second_writer_exits_2_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path, run_cli):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        tiny = ["--model", "xviz-demo", "--dataset-options", "size=8", "--epochs", "1", "--out", run]
        code, _, err = run_cli("train", *tiny)
        assert_one_line(code, err, f"run folder `{run}` is being written by process {holder.pid} on ",
                        "wait until it finishes or choose another --out")
        assert not (run / "manifest.json").exists()
    finally:
        holder.kill()  # kill -9: the lock file stays, naming a dead process
        holder.wait()
    assert json.loads((run / "lock").read_text())["pid"] == holder.pid
    code, out, err = run_cli("train", *tiny)
    assert code == 0, err
    assert f"its previous writer (process {holder.pid} on " in out and "taking over" in out
    assert not (run / "lock").exists()


@pytest.mark.slow
def test_two_trainings_into_one_folder_at_once(tmp_path):
    args = RUN[:-1] + [str(tmp_path / "run")]
    procs = [subprocess.Popen([sys.executable, "-m", "xviz", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(err for code, err in results if code == 2)
    assert "is being written by process" in err
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]


def test_a_folder_with_results_but_no_checkpoints_is_refused_unless_overwrite(tmp_path, run_cli):
    run = tmp_path / "run"
    tiny = ["train", "--model", "xviz-demo", "--dataset-options", "size=8", "--epochs", "1", "--out", run]
    assert run_cli(*tiny)[0] == 0
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    code, _, err = run_cli(*tiny)
    assert_one_line(code, err, f"`{run}` holds results of an earlier run (best.pt, last.pt, history.json, "
                    "history.csv) but no checkpoint to resume from", "--overwrite")
    assert snapshot(run) == before  # nothing touched
    assert run_cli(*tiny, "--overwrite", "--seed", "1")[0] == 0
    assert read_checkpoint(run / "last.pt")["config"]["seed"] == 1
    code, _, err = run_cli(*tiny)
    assert_one_line(code, err, "already holds a run: continue it with --resume, replace it with --overwrite")


# --- 3. models whose outputs are not finite -------------------------------------------------------

@pytest.fixture
def overflowing(tmp_path, demo):
    """A demo checkpoint with finite weights whose scores overflow to infinity."""
    state = {k: v.clone() for k, v in demo.module.state_dict().items()}
    state["classifier.weight"] = state["classifier.weight"].abs() * 1e38  # finite; their sum over 64 inputs is not
    path = tmp_path / "overflow.pt"
    save_checkpoint(path, arch="xviz-demo", state_dict=state, class_names=demo.class_names,
                    preprocessing=demo.preprocessing)
    return path


@pytest.mark.parametrize("command", [
    ["explain", "--out", "{tmp}/x", str(SAMPLE)],
    ["evaluate", "--data", "synthetic", "--method", "gradcam", "--limit", "2", "--metrics", "deletion", "--steps", "2",
     "--out", "{tmp}/e"],
    ["misclassified", "--dataset-options", "size=6", "--out", "{tmp}/m.png"],
])
def test_explain_evaluate_and_misclassified_refuse_a_model_with_non_finite_outputs(run_cli, overflowing, tmp_path,
                                                                                   command):
    code, out, err = run_cli(*[a.format(tmp=tmp_path) for a in command], "--checkpoint", overflowing)
    assert_one_line(code, err, f"the model from `{overflowing}` gives NaN or infinite outputs")
    assert "nan" not in out.lower() and "accuracy" not in out


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensor(run_cli, demo, tmp_path):
    state = {k: v.clone() for k, v in demo.module.state_dict().items()}
    name = next(iter(state))
    state[name].view(-1)[0] = float("nan")
    path = tmp_path / "nan.pt"
    save_checkpoint(path, arch="xviz-demo", state_dict=state, class_names=demo.class_names,
                    preprocessing=demo.preprocessing)
    code, _, err = run_cli("explain", "--checkpoint", path, "--out", tmp_path / "x", SAMPLE)
    assert_one_line(code, err, f"checkpoint `{path}`: field `state_dict.{name}` holds NaN values")


# --- 4. every setting checked where it is defined, for recipes and flags alike ---------------------

SETTINGS = [  # (recipe line, flag, the message both give)
    ("epochs = 1.5", ["--epochs", "1.5"], "`epochs = 1.5` must be a whole number"),
    ("epochs = true", None, "`epochs = true` must be a whole number"),
    ('lr = "fast"', ["--lr", "fast"], '`lr = "fast"` must be a number'),
    ('lr = inf', ["--lr", "inf"], "`lr = inf` must be a finite number"),
    ("lr = 0", ["--lr", "0"], "`lr = 0` must be above 0"),
    ("momentum = [1, 2]", None, "`momentum = [1, 2]` must be a number"),
    ("nesterov = 1", None, "`nesterov = 1` must be true or false"),
    ("label_smoothing = 5", ["--label-smoothing", "5"], "`label_smoothing = 5` must be between 0 and 1"),
    ("seed = -1", ["--seed", "-1"], "`seed = -1` must be between 0 and 4294967295"),
    ("workers = -3", ["--workers", "-3"], "`workers = -3` must be at least 0"),
    ("image_size = -5", ["--image-size", "-5"], "`image_size = -5` must be at least 8"),
    ("batch_size = 0", ["--batch-size", "0"], "`batch_size = 0` must be at least 1"),
    ('optimizer = "sgdd"', ["--optimizer", "sgdd"], "unknown optimizer `sgdd`: choose sgd, adam, adamw"),
    ('augment = "flip,mixup"', ["--augment", "flip,mixup"], "unknown augment `mixup`: choose crop, flip"),
    ('milestones = [3, "a"]', ["--milestones", "3,a"], '`milestones = [3, "a"]`: each item must be a whole number'),
    ("unfreeze = 3", None, "`unfreeze = 3` must be a table of name = value"),
    ("[unfreeze]\nhead = 0", ["--unfreeze", "head=0"], "`unfreeze.head = 0` must be at least 1"),
    ("[lr_mult]\nlayer4 = -1", ["--lr-mult", "layer4=-1"], "`lr_mult.layer4 = -1` must be at least 0"),
    ("rrc_scale = 2.0", ["--rrc-scale", "2.0"], "`rrc_scale = 2.0` must be above 0 and at most 1"),
    ('amp = "maybe"', ["--amp", "maybe"], "unknown amp `maybe`: choose auto, off"),
    ("keep = 0", ["--keep", "0"], "`keep = 0` must be at least 1"),
    ("[dataset_options]\nsize = -4", ["--dataset-options", "size=-4"],
     "dataset `synthetic` does not accept the options {'size': -4}: `size` must be a whole number of at least 0"),
    ('[dataset_options]\nsize = "abc"', ["--dataset-options", "size=abc"],
     "dataset `synthetic` does not accept the options {'size': 'abc'}: `size` must be a whole number"),
]


@pytest.mark.parametrize("line, flag, message", SETTINGS, ids=[s[0].split("\n")[-1] for s in SETTINGS])
def test_a_bad_setting_is_the_same_one_line_in_a_recipe_and_as_a_flag(run_cli, tmp_path, line, flag, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "xviz-demo"\n{line}\n')
    code, _, err = run_cli("train", "--recipe", recipe, "--out", tmp_path / "a")
    assert_one_line(code, err, message)
    if flag:
        code, _, err2 = run_cli("train", "--model", "xviz-demo", *flag, "--out", tmp_path / "b")
        assert code == 2 and err2 == err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing left behind


def test_a_list_setting_given_one_name_is_a_list_of_that_name(tmp_path):
    from xviz.train.config import make_config

    recipe = tmp_path / "r.toml"
    recipe.write_text('augment = "flip"\ntransfer_exclude = "fc"\nmilestones = [2, 4]\n')
    cfg = make_config(str(recipe))
    assert cfg.augment == ["flip"] and cfg.transfer_exclude == ["fc"] and cfg.milestones == [2, 4]


# --- 5. checkpoints checked before use ------------------------------------------------------------

def _demo_fields(demo, **changes):
    fields = dict(format="xviz-checkpoint/1", arch="xviz-demo", arch_options={},
                  state_dict=dict(demo.module.state_dict()), class_names=list(demo.class_names),
                  preprocessing=demo.preprocessing.to_dict(), history=[], config={})
    fields.update(changes)
    return fields


def _malformed(demo):
    state = dict(demo.module.state_dict())
    last = [k for k in state if k.endswith("weight")][-1]
    wide = dict(state, **{last: torch.zeros(state[last].shape[0], state[last].shape[1] + 1)})
    return {
        "shapes": (_demo_fields(demo, state_dict=wide), f"tensor `{last}` has shape"),
        "fewer class names": (_demo_fields(demo, class_names=["a", "b", "c"]),
                              "field `class_names` lists 3 names but the weights give 6 outputs"),
        "class names not text": (_demo_fields(demo, class_names=[1, 2, 3, 4, 5, 6]),
                                 "field `class_names` holds a whole number (`1`) among the names"),
        "preprocessing text": (_demo_fields(demo, preprocessing="imagenet"),
                               "field `preprocessing` is str `imagenet`, not a table"),
        "preprocessing zero crop": (_demo_fields(demo, preprocessing={**demo.preprocessing.to_dict(), "crop": 0}),
                                    "field `preprocessing` `crop` is `0`: must be a whole number of pixels"),
        "preprocessing zero std": (_demo_fields(demo, preprocessing={**demo.preprocessing.to_dict(), "std": [0, 1, 1]}),
                                   "field `preprocessing` `std` is `[0, 1, 1]`: every value must be positive"),
        "state dict as a list": (_demo_fields(demo, state_dict=list(state.values())),
                                 "field `state_dict` is a list, not a table of named tensors"),
        "arch options as text": (_demo_fields(demo, arch_options="big"), "field `arch_options` is text `big`, not a table"),
    }


@pytest.mark.parametrize("case", ["shapes", "fewer class names", "class names not text", "preprocessing text",
                                  "preprocessing zero crop", "preprocessing zero std", "state dict as a list",
                                  "arch options as text"])
def test_a_malformed_checkpoint_is_one_line_naming_the_file_and_field(run_cli, demo, tmp_path, case):
    fields, message = _malformed(demo)[case]
    path = tmp_path / "bad.pt"
    torch.save(fields, path)
    code, _, err = run_cli("explain", "--checkpoint", path, "--out", tmp_path / "x", SAMPLE)
    assert_one_line(code, err, f"`{path}`", message)


@pytest.mark.parametrize("content", [b"hello world\n", b"}", b"(", b"\x80\x02}q\x00.", b"PK\x03\x04broken zip",
                                     bytes(range(256)) * 8, b""])
@pytest.mark.parametrize("entry", ["explain", "weights", "train", "plot-history"])
def test_a_file_that_is_not_a_checkpoint_is_one_line(run_cli, tmp_path, content, entry):
    path = tmp_path / "text.pt"
    path.write_bytes(content)
    argv = {"explain": ["explain", "--checkpoint", path, "--out", tmp_path / "x", SAMPLE],
            "weights": ["explain", "--model", "xviz-demo", "--weights", path, "--out", tmp_path / "x", SAMPLE],
            "train": ["train", "--model", "xviz-demo", "--weights", path, "--dataset-options", "size=8",
                      "--out", tmp_path / "run"],
            "plot-history": ["plot-history", path, "--out", tmp_path / "h.png"]}[entry]
    code, _, err = run_cli(*argv)
    assert_one_line(code, err, f"`{path}` is not a PyTorch checkpoint, or it is damaged")


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / f"xviz-torture-pwned-{os.getpid()}"


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_with_a_forbidden_global_is_named_and_never_runs(run_cli, tmp_path, protocol):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f, protocol=protocol)
    zipped = tmp_path / "evil-zip.pt"
    torch.save({"state_dict": Payload()}, zipped)  # torch's own format, pickled by torch.save
    for bad in (path, zipped):
        code, _, err = run_cli("explain", "--checkpoint", bad, "--out", tmp_path / "x", SAMPLE)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        if protocol == 2 or bad == zipped:
            assert "holds Python objects besides weights (`posix.system`), which are not loaded for safety" in err, err
        else:  # the weights-only unpickler stops at protocol 4's framing before it meets the global
            assert "is not a PyTorch checkpoint, or it is damaged" in err
    assert not MARKER.exists()


def test_a_forbidden_global_is_recognised_whatever_the_case_torch_writes(tmp_path):
    from xviz.checkpoint import unreadable

    for text in ("Unsupported global: GLOBAL posix.system was not an allowed global",
                 "WeightsUnpickler error: unsupported GLOBAL posix.system"):
        assert "(`posix.system`), which are not loaded for safety" in str(unreadable(tmp_path / "a.pt", Exception(text)))


# --- 6. a full disk during training ---------------------------------------------------------------

def _enospc_at(step_name):
    """A fault hook raising ENOSPC in the middle of the write of ``step_name`` in epoch 2."""
    seen = {"n": 0}

    def fault(step, path):
        if step == "partial" and path.name == step_name:
            seen["n"] += 1
            if seen["n"] == {"last.pt": 2, "manifest.json": 3}.get(step_name, 1):  # epoch 2's write
                raise OSError(errno.ENOSPC, "No space left on device")
    return fault


@pytest.mark.parametrize("failing, safe", [
    ("last.pt", "checkpoints/epoch-0002.pt` holds the run up to epoch 2"),
    pytest.param("epoch-0002.pt", "checkpoints/epoch-0001.pt` holds the run up to epoch 1", marks=pytest.mark.slow),
    pytest.param("manifest.json", "checkpoints/epoch-0002.pt` holds the run up to epoch 2", marks=pytest.mark.slow),
])
def test_a_full_disk_is_one_line_and_loses_nothing(reference, tmp_path, monkeypatch, run_cli, failing, safe):
    files, _ = reference
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: 0.0))
    monkeypatch.setattr(run_folder, "FAULT", _enospc_at(failing))
    code, _, err = run_cli(*RUN)
    assert_one_line(code, err, "No space left on device): nothing written before is lost", safe,
                    "free space, then continue with --resume run")
    assert not [p for p in Path("run").rglob(".*") if p.name != "lock"]  # no temporary left
    monkeypatch.setattr(run_folder, "FAULT", None)
    code, _, err = run_cli("train", "--resume", "run")
    assert code == 0, err
    assert snapshot(Path("run")) == files


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None or sys.platform != "linux", reason="needs unshare and tmpfs")
def test_a_really_full_disk_on_a_small_tmpfs(tmp_path):
    """Train onto a 1.5 MB tmpfs (the demo's full checkpoint is ~0.6 MB): the second epoch does not fit."""
    script = textwrap.dedent(f"""
        set -e
        mount -t tmpfs -o size=1500k tmpfs {tmp_path}/disk
        cd {tmp_path}/disk
        set +e
        {sys.executable} -m xviz {' '.join(RUN)} 2> {tmp_path}/err.txt > /dev/null; echo "first $?" > {tmp_path}/codes
        mount -o remount,size=20m {tmp_path}/disk
        {sys.executable} -m xviz train --resume run > /dev/null 2>> {tmp_path}/err2.txt; echo "resume $?" >> {tmp_path}/codes
        ls -a run run/checkpoints > {tmp_path}/files.txt
    """)
    (tmp_path / "disk").mkdir()
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip("unprivileged mount namespaces are not allowed here")
    subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=ROOT, timeout=600, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (tmp_path / "codes").read_text().split() == ["first", "2", "resume", "0"]
    err = (tmp_path / "err.txt").read_text()
    assert_one_line(2, err, "No space left on device): nothing written before is lost")
    listing = (tmp_path / "files.txt").read_text().split()
    assert "epoch-0003.pt" in listing and not [n for n in listing if n.startswith(".") and n not in (".", "..")]


# --- 8. the image cap is the stated pixel count, checked before decoding ---------------------------

def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` but holds almost no data (decoding it would fail)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_a_25000_pixel_square_png_is_refused_from_its_header(run_cli, tmp_path):
    big = _png_header(tmp_path / "big.png", 25000, 25000)
    assert big.stat().st_size < 200
    started = time.perf_counter()
    code, _, err = run_cli("explain", "--model", "xviz-demo", "--out", tmp_path / "x", big)
    assert_one_line(code, err, f"image `{big}` is 25000x25000 = 625,000,000 pixels, over the 400,000,000 xviz decodes")
    assert time.perf_counter() - started < 30  # nothing was decoded


def test_the_cap_is_exactly_the_stated_count(tmp_path, monkeypatch):
    from PIL import Image

    from xviz import images

    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    Image.new("RGB", (100, 100), "red").save(tmp_path / "at.png")
    Image.new("RGB", (100, 101), "red").save(tmp_path / "over.png")
    assert images.read_image(tmp_path / "at.png").size == (100, 100)
    with pytest.raises(XvizError, match="is 100x101 = 10,100 pixels, over the 10,000 xviz decodes"):
        images.read_image(tmp_path / "over.png")
    with pytest.raises(XvizError, match="20000x20001 = 400,020,000 pixels"):
        monkeypatch.setattr(images, "MAX_PIXELS", 400_000_000)
        images.read_image(_png_header(tmp_path / "edge.png", 20000, 20001))


# --- 10. resume says why it cannot resume ---------------------------------------------------------

def test_resume_names_the_damaged_checkpoints(reference, tmp_path, run_cli):
    files, _ = reference
    run = restore(files, tmp_path / "run")
    for name in ("checkpoints/epoch-0002.pt", "checkpoints/epoch-0003.pt"):
        (run / name).write_bytes(files[name][:500])
    code, _, err = run_cli("train", "--resume", run)
    assert_one_line(code, err, f"nothing to resume in `{run}`: none of its 2 checkpoint(s) can be used (newest: "
                    f"`{run}/checkpoints/epoch-0003.pt` is not a PyTorch checkpoint, or it is damaged",
                    "start the run again with --overwrite")


def test_resume_falls_back_from_a_checkpoint_the_manifest_does_not_match(reference, tmp_path, resume):
    files, _ = reference
    run = restore(files, tmp_path / "run")
    state = read_checkpoint(run / "checkpoints" / "epoch-0003.pt")  # a readable file with other content
    state["history"][-1]["test_acc"] = 1.0
    torch.save(state, run / "checkpoints" / "epoch-0003.pt")
    assert "resuming `run` from epoch-0002.pt: epoch 3/3" in resume(tmp_path)
    assert snapshot(run) == files  # epoch 3 trained again, exactly
