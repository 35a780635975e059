"""What the command line prints around the work: our warnings as one line of ours."""

import warnings
from pathlib import Path

import kanjirec
from kanjirec import cli


def test_a_warning_of_ours_prints_as_one_line_and_a_foreign_one_keeps_its_source(capsys, monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", cli._show_warning)
    ours = str(Path(kanjirec.__file__).parent / "ensemble.py")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit("calibration stopped at T = 20", UserWarning, ours, 219)
        warnings.warn_explicit("a dependency speaks", UserWarning, "/elsewhere/lib.py", 7)
    err = capsys.readouterr().err
    assert "kanjirec: warning: calibration stopped at T = 20\n" in err
    assert "ensemble.py" not in err
    assert "/elsewhere/lib.py:7: UserWarning: a dependency speaks" in err
