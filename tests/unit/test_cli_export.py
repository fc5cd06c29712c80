"""CSV cells typed by staff stay text when the export is opened in a spreadsheet."""

from __future__ import annotations

from cli.export import spreadsheet_text


def test_text_a_spreadsheet_would_run_as_a_formula_is_kept_as_text() -> None:
    for formula in ('=HYPERLINK("x")', "+1", "-1", "@SUM(A1)", "\tx", "\rx", " +bank", "  =1+2"):
        assert spreadsheet_text(formula) == "'" + formula
    for text in ("annual review", "", "review = yes", "'quoted"):
        assert spreadsheet_text(text) == text
