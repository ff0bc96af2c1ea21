# placeholder until the history module lands
import csv, json
from pathlib import Path
from xviz.render import atomic_write


def write_history(run_dir, history):
    run_dir = Path(run_dir)
    j = atomic_write(run_dir / "history.json", lambda t: Path(t).write_text(json.dumps(history, indent=1)))
    keys = list(dict.fromkeys(k for row in history for k in row))

    def w(t):
        with open(t, "w", newline="") as fh:
            wr = csv.DictWriter(fh, keys)
            wr.writeheader()
            wr.writerows(history)
    return j, atomic_write(run_dir / "history.csv", w)
