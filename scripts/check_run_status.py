"""Read `flwr ls --format json` on stdin; exit non-zero unless the run completed (flwr run itself exits 0)."""

import json
import sys

run = json.load(sys.stdin)["runs"][0]
if run["status"] != "finished:completed":
    sys.exit("fl-dp: run %s %s: %s" % (run["run-id"], run["status"], run.get("status-details", "")))
print("run %s completed in %.1f s" % (run["run-id"], run["elapsed"]), file=sys.stderr)
