"""The command line: `check` lists every operator with the kernel that serves it on this machine; `bench` checks its
arguments (the benchmark itself: test_bench.py)."""
import pytest

from ms_attention import __main__ as cli
from ms_attention import opdef


def test_check_lists_every_operator(capsys):
    assert cli.main(["check"]) == 0
    lines = capsys.readouterr().out.splitlines()
    served = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert set(served) == set(opdef.names())
    assert served["incre_flash_attention"] == "cpu"


def test_bench_rejects_an_unknown_group():
    with pytest.raises(SystemExit, match="unknown group"):
        cli.main(["bench", "--only", "decode,nonsense"])
