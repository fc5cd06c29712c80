"""The portfolio report's ratios."""

from services.lending.figures import basis_points


def test_report_ratios_are_basis_points_rounded_half_up() -> None:
    """42,346 of 81,819 is 51.7557...%: 5,176 basis points (it was cut to 5,175)."""
    assert basis_points(42_346, 81_819) == 5_176
    assert (basis_points(1, 3), basis_points(2, 3)) == (3_333, 6_667)
    assert (basis_points(1, 20_000), basis_points(1, 20_001)) == (1, 0)  # half up, below
    assert basis_points(81_819, 81_819) == 10_000
