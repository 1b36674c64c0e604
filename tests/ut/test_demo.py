"""`python -m ms_attention demo`, the README's main job, runs end to end and every check in it passes."""
import subprocess
import sys


def test_demo_runs_and_matches_the_references():
    done = subprocess.run([sys.executable, "-m", "ms_attention", "demo"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    verdicts = [line for line in done.stdout.splitlines() if line.rstrip().endswith(("OK", "MISMATCH", "LEARNING"))]
    assert len(verdicts) == 4 and all(line.rstrip().endswith("OK") for line in verdicts), done.stdout
