"""Run folders: one training run kept as a small transaction log, with exact RNG state for resuming.

A run folder holds::

    lock                        present while a process writes the folder: its pid, host and start time
    checkpoints/epoch-0007.pt   full training state (model, optimiser, scheduler, scaler, epoch, RNG, history)
    best.pt                     the model of the epoch with the best test accuracy (an xviz checkpoint)
    last.pt                     the model after the last finished epoch (an xviz checkpoint)
    history.json, history.csv   one row per epoch
    manifest.json               written last: the finished epoch, the best epoch and its test accuracy,
                                the SHA-256 of every file above, the run's settings

An epoch is committed in this order: its full checkpoint, ``last.pt``, ``best.pt`` (when it is the
best), the history, the manifest; then checkpoints beyond the newest ``keep`` are removed. Each file
is written to a temporary file and renamed into place, so a kill leaves every file either old or new.
Resuming (:meth:`RunFolder.open`) takes the newest complete full checkpoint, re-derives ``last.pt``,
``best.pt`` and the history from it (and from the checkpoint of the best epoch), rewrites whatever
differs, removes temporaries, and writes the manifest: the folder then holds exactly what an
uninterrupted run would have written up to that epoch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import re
import socket
import time
from pathlib import Path

import numpy as np
import torch

from xviz.checkpoint import checkpoint_payload, read_checkpoint, to_bytes
from xviz.errors import XvizError
from xviz.render import atomic_write
from xviz.train.history import history_files

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")
SPLIT_FILE, SKIPPED_FILE = "split.json", "skipped_images.txt"  # the dataset's split; the images left out
RESULTS = ("best.pt", "last.pt", "history.json", "history.csv", SPLIT_FILE, SKIPPED_FILE)
MANIFEST = "manifest.json"
LOCK = "lock"
MANIFEST_FORMAT = "xviz-run/1"
TEMPORARY = re.compile(r"^\.(best\.pt|last\.pt|history\.json|history\.csv|manifest\.json|epoch-\d+\.pt)\..+")

FAULT = None  # a test hook: FAULT(step, path) runs at each step of every write ("partial", "written",
#               "replaced") and removal ("removed"); a test kills the process there
_LOCKED: list["RunFolder"] = []  # folders this process holds, newest last


def run_folder_of(path) -> Path | None:
    """The run folder a checkpoint belongs to (``RUN``, ``RUN/best.pt``, ``RUN/checkpoints/epoch_N.pt``), or None."""
    path = Path(path)
    return next((p for p in (path, path.parent, path.parent.parent) if (p / MANIFEST).is_file()
                 or (p / SPLIT_FILE).is_file()), None)


def read_split_record(run_root) -> dict | None:
    """The dataset split the run folder ``run_root`` recorded (``split.json``), or None."""
    if run_root is None or not (Path(run_root) / SPLIT_FILE).is_file():
        return None
    try:
        return json.loads((Path(run_root) / SPLIT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise XvizError(f"`{Path(run_root) / SPLIT_FILE}` cannot be read ({exc}): the run's split is lost; "
                        "train a new run") from None


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) random states as plain types and tensors (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def best_epoch(history: list[dict]) -> int | None:
    """The epoch whose ``best.pt`` a run keeps: the first with the highest test accuracy."""
    best, epoch = None, None
    for row in history:
        if best is None or row["test_acc"] > best:
            best, epoch = row["test_acc"], row["epoch"]
    return epoch


def model_bytes(full: dict, epoch: int) -> bytes:
    """``best.pt``/``last.pt`` of ``epoch``: the full checkpoint ``full`` without its training state."""
    return to_bytes({**{k: v for k, v in full.items() if k != "training"}, "epoch": epoch})


def sha256(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def unlocks_run_folders(function):
    """Decorator: run folders locked during the call are unlocked when it returns or raises."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        held = len(_LOCKED)
        try:
            return function(*args, **kwargs)
        except XvizError:  # a mistake found before the first epoch leaves no run folder behind
            for folder in _LOCKED[held:]:
                folder.abandon()
            raise
        finally:
            while len(_LOCKED) > held:
                _LOCKED[-1].unlock()
    return wrapper


class RunFolder:
    """One training run in ``root``; ``keep`` newest full checkpoints are kept."""

    def __init__(self, root: str | Path, keep: int = 3):
        self.root, self.keep = Path(root), keep
        self.checkpoints = self.root / "checkpoints"
        self._lock_fd: int | None = None
        self._hashes: dict[str, str] = {}  # the manifest's `files`, as last written
        self._created: list[Path] = []  # folders this process created
        self._untouched = False  # True from writing a new run's first manifest until its first commit

    # --- reading --------------------------------------------------------------------------------

    def epoch_files(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := EPOCH_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def manifest(self) -> dict | None:
        """The manifest, or None when there is none (a run of an older xviz) or it cannot be read."""
        try:
            data = json.loads((self.root / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None

    def latest(self) -> tuple[dict, Path] | None:
        """The newest usable full checkpoint and its path: readable, with a training state, and equal to
        the manifest's hash when the manifest lists it (a damaged newest one falls back to the one
        before). None when there is none; an error naming the newest when none is usable."""
        files = self.epoch_files()
        listed = (self.manifest() or {}).get("files", {})
        problem = None
        for path in reversed(files):
            expected = listed.get(self._name(path))
            try:
                data = read_checkpoint(path)
                if "training" not in data:
                    raise XvizError(f"`{path}` holds a model but no training state")
                if expected and sha256(path.read_bytes()) != expected:
                    raise XvizError(f"`{path}` does not match the SHA-256 the manifest recorded (damaged)")
            except XvizError as exc:
                problem = problem or str(exc)
                continue
            return data, path
        if files:
            raise XvizError(f"nothing to resume in `{self.root}`: none of its {len(files)} checkpoint(s) can be "
                            f"used (newest: {problem.rstrip('.')}); start the run again with --overwrite")
        return None

    def saved_config(self) -> dict:
        """The settings of the run in this folder: from its newest checkpoint, else from the manifest
        written when it started (a run killed before its first epoch finished)."""
        latest = self.latest()
        if latest is not None:
            return latest[0]["config"]
        manifest = self.manifest()
        if manifest and isinstance(manifest.get("config"), dict):
            return manifest["config"]
        raise XvizError(f"nothing to resume in `{self.root}`: it holds no checkpoint (start without --resume)")

    # --- the lock -------------------------------------------------------------------------------

    def lock(self, log=print) -> None:
        """Hold ``root/lock`` (an OS lock, released by the kernel if the process dies) for this process.
        Another live holder is a one-line error naming it; a lock file left by a dead one is taken over."""
        path = self.root / LOCK
        try:
            self._created = [p for p in (*reversed(self.root.parents), self.root) if not p.exists()]
            self.root.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                if not _try_lock(fd):
                    owner = _read_owner(fd)
                    os.close(fd)
                    who = (f"process {owner.get('pid')} on {owner.get('host')} (since {owner.get('since')})"
                           if owner else "another process")
                    raise XvizError(f"run folder `{self.root}` is being written by {who}: wait until it finishes "
                                    "or choose another --out")
                with contextlib.suppress(FileNotFoundError):
                    if os.fstat(fd).st_ino == os.stat(path).st_ino:
                        break  # else its holder removed the file between our open and lock: try again
                os.close(fd)
            previous = _read_owner(fd)
            if previous:
                log(f"`{self.root}`: its previous writer (process {previous.get('pid')} on {previous.get('host')}) "
                    "stopped without unlocking it; taking over")
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(owner).encode(), 0)
        except OSError as exc:
            raise XvizError(f"cannot lock the run folder `{self.root}` ({exc.strerror or exc}): "
                            "choose another --out") from None
        self._lock_fd = fd
        _LOCKED.append(self)

    def unlock(self) -> None:
        if self._lock_fd is None:
            return
        os.ftruncate(self._lock_fd, 0)
        if fcntl is not None:  # removed while still held, so a process that opened it tries again
            (self.root / LOCK).unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None
        if self in _LOCKED:
            _LOCKED.remove(self)

    # --- opening --------------------------------------------------------------------------------

    def open(self, config: dict, *, resume: bool = False, overwrite: bool = False, log=print) -> dict | None:
        """Lock the folder and make it ready: for ``resume``, repair it (:meth:`repair`) and return the
        full checkpoint to continue from (None: no epoch had finished); otherwise refuse a folder that
        holds a run unless ``overwrite`` (which removes that run's files) and record ``config``."""
        self.lock(log)
        try:
            return self._prepare(config, resume, overwrite, log)
        except OSError as exc:
            raise XvizError(f"could not write into the run folder `{self.root}` ({exc.strerror or exc}): nothing "
                            "in it is lost; free space and run the command again") from None

    def _prepare(self, config: dict, resume: bool, overwrite: bool, log) -> dict | None:
        self.remove_temporaries()
        if overwrite and not resume:
            for path in [*self.epoch_files(), *(self.root / n for n in (*RESULTS, MANIFEST))]:
                path.unlink(missing_ok=True)
        if resume:
            state = self.repair(log)
            if state is None and self.manifest() is None:
                raise XvizError(f"nothing to resume in `{self.root}`: it holds no checkpoint (start without --resume)")
            return state
        if self.epoch_files():
            raise XvizError(f"`{self.root}` already holds a run: continue it with --resume, replace it with "
                            "--overwrite, or choose another --out")
        results = [n for n in RESULTS if (self.root / n).exists()]
        if results:
            raise XvizError(f"`{self.root}` holds results of an earlier run ({', '.join(results)}) but no checkpoint "
                            "to resume from: choose another --out, or replace them with --overwrite")
        self._commit_manifest(0, [], config)
        self._untouched = True
        return None

    def abandon(self) -> None:
        """Undo :meth:`open` of a new run that never reached :meth:`commit`: its manifest and the
        folders created for it go."""
        if self._untouched:
            (self.root / MANIFEST).unlink(missing_ok=True)
            self.unlock()
            for folder in reversed(self._created):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty

    def remove_temporaries(self) -> None:
        """Remove what a write killed halfway left behind (``.last.pt.x1y2.pt`` and the like)."""
        for folder in (self.root, self.checkpoints):
            if folder.is_dir():
                for path in folder.iterdir():
                    if TEMPORARY.match(path.name):
                        path.unlink(missing_ok=True)

    def repair(self, log=print) -> dict | None:
        """Make ``last.pt``, ``best.pt``, the history and the manifest those of the newest usable full
        checkpoint, rewriting only what differs, and remove checkpoints beyond ``keep``. Returns that
        checkpoint (None when the run has none yet)."""
        latest = self.latest()
        if latest is None:
            return None
        full, path = latest
        epoch, history = full["training"]["epoch"], full["history"]
        files = {"last.pt": model_bytes(full, epoch)}
        best = best_epoch(history)
        files["best.pt"] = files["last.pt"] if best == epoch else self._best_bytes(best, log)
        files.update(history_files(history))
        repaired = []
        for name, data in files.items():
            if data is not None and sha256(self._read(name)) != sha256(data):
                self._write(name, data)
                repaired.append(name)
        self._hashes = {n: h for n, h in (self.manifest() or {}).get("files", {}).items() if n.startswith("checkpoints/")}
        self._hashes[self._name(path)] = sha256(path.read_bytes())
        self._hashes.update({name: sha256(data if data is not None else self._read(name)) for name, data in files.items()})
        self._commit_manifest(epoch, history, full["config"])
        if repaired:
            log(f"repaired {', '.join(repaired)} in `{self.root}` from {self._name(path)}")
        return {**full, "path": str(path)}

    def resume_point(self) -> dict | None:
        """The newest usable full checkpoint with its ``path``, read only (for processes that do not write)."""
        latest = self.latest()
        return None if latest is None else {**latest[0], "path": str(latest[1])}

    def _best_bytes(self, best: int, log) -> bytes | None:
        """``best.pt`` as epoch ``best`` wrote it: None when the file on disk is that (its hash is in the
        manifest, or it reads as epoch ``best``), else rebuilt from that epoch's full checkpoint."""
        on_disk = self._read("best.pt")
        manifest = self.manifest() or {}
        recorded = manifest.get("files", {}).get("best.pt") if (manifest.get("best") or {}).get("epoch") == best else None
        if on_disk is not None and (sha256(on_disk) == recorded if recorded else _epoch_of(self.root / "best.pt") == best):
            return None
        source = self.checkpoints / f"epoch-{best:04d}.pt"
        try:
            return model_bytes(read_checkpoint(source), best)
        except XvizError:
            log(f"`{self.root / 'best.pt'}` is damaged and the checkpoint of its epoch {best} is no longer kept: "
                "it cannot be rebuilt; last.pt and the history are intact")
            return None

    # --- writing --------------------------------------------------------------------------------

    def commit(self, epoch: int, model_meta: dict, training: dict) -> Path:
        """Write epoch ``epoch``: its full checkpoint, ``last.pt``, ``best.pt`` (when this epoch is the
        best of ``model_meta["history"]``), the history and, last, the manifest; prune old checkpoints.
        A failed write (a full disk) is one line saying what is safe."""
        self._untouched = False
        full = checkpoint_payload(**model_meta, training=training)
        history = full["history"]
        path = self.checkpoints / f"epoch-{epoch:04d}.pt"
        last = model_bytes(full, epoch)
        writes = {self._name(path): to_bytes(full), "last.pt": last}
        if best_epoch(history) == epoch:
            writes["best.pt"] = last
        writes.update(history_files(history))
        saved = ([p for p in self.epoch_files() if p != path] or [None])[-1]  # the newest complete one
        try:
            for name, data in writes.items():
                self._hashes[name] = self._write(name, data)
                saved = path if name == self._name(path) else saved
            name = MANIFEST
            self._commit_manifest(epoch, history, full["config"])
        except OSError as exc:
            safe = f"`{saved}` holds the run up to epoch {_epoch_number(saved)}" if saved else "no epoch was saved yet"
            raise XvizError(f"could not write `{self.root / name}` ({exc.strerror or exc}): nothing written before "
                            f"is lost ({safe}); free space, then continue with --resume {self.root}") from None
        return path

    def _commit_manifest(self, epoch: int, history: list[dict], config: dict) -> None:
        """Write the manifest (after every other file of the epoch), then remove full checkpoints beyond
        the newest ``keep``."""
        kept = {self._name(p): p for p in self.epoch_files()[-self.keep:]}
        files = {n: h for n, h in self._hashes.items() if not n.startswith("checkpoints/") or n in kept}
        files.update({n: sha256(p.read_bytes()) for n, p in kept.items() if n not in files})
        best = best_epoch(history)
        manifest = {
            "format": MANIFEST_FORMAT,
            "epoch": epoch,
            "best": None if best is None else {"epoch": best, "test_acc": next(
                row["test_acc"] for row in history if row["epoch"] == best)},
            "files": dict(sorted(files.items())),
            "config": config,
        }
        self._write(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
        self._hashes = files
        for old in self.epoch_files()[:-self.keep]:
            old.unlink(missing_ok=True)
            _fault("removed", old)

    def _write(self, name: str, data: bytes) -> str:
        """Write ``root/name`` atomically (fsync'd before the rename); returns its SHA-256."""
        path = self.root / name

        def write(tmp):
            half = len(data) // 2
            with open(tmp, "wb") as out:
                out.write(data[:half])
                out.flush()
                _fault("partial", path)
                out.write(data[half:])
                out.flush()
                os.fsync(out.fileno())
            _fault("written", path)

        atomic_write(path, write)
        _fault("replaced", path)
        return sha256(data)

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except OSError:
            return None

    def _name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _fault(step: str, path: Path) -> None:
    if FAULT is not None:
        FAULT(step, path)


def _try_lock(fd: int) -> bool:
    """Take the OS lock of the open file ``fd`` without waiting; False when another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except (BlockingIOError, PermissionError):
        return False
    return True


def _read_owner(fd: int) -> dict:
    """What a lock file says about its holder (empty when it says nothing readable)."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _epoch_of(path: Path) -> int | None:
    try:
        return read_checkpoint(path).get("epoch")
    except XvizError:
        return None


def _epoch_number(path: Path) -> int:
    return int(EPOCH_FILE.match(path.name).group(1))
