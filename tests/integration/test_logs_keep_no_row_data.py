"""A write PostgreSQL refuses, logged as a failure, keeps the row's values out of the
logs: PostgreSQL's DETAIL quotes the refused row (survivor ids, districts, sex...)."""

from __future__ import annotations

import io
import logging

import asyncpg
import pytest

from services.common.logging import ROW_DATA_LEFT_OUT, get_logger
from tests.conftest import Cluster
from tests.lending_helpers import lending_db


async def test_a_refused_row_is_not_quoted_in_the_logs(cluster: Cluster) -> None:
    formatter = logging.getLogger().handlers[0].formatter  # the services' own pipeline
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(formatter)
    logging.getLogger().addHandler(handler)
    try:
        async with lending_db(cluster).pool.acquire() as conn:
            with pytest.raises(asyncpg.CheckViolationError) as refused:
                await conn.execute(
                    """INSERT INTO loans (loan_id, survivor_id, product_id, product_version,
                           state, principal_minor, currency_code, district_code, borrower_sex,
                           borrower_age_band, fund_id, submitted_by)
                       VALUES ('loan-log-check', 'srv-private-0042', 'small_trade', 1,
                           'NO_SUCH_STATE', 1000, 'AZN', 'saatli', 2, 3, 'main', 'cw-01')"""
                )
            assert "srv-private-0042" in str(refused.value)  # what the logs must not keep
            try:
                raise RuntimeError("the write failed") from refused.value
            except RuntimeError:
                get_logger("tests").exception("rpc failed unexpectedly")
    finally:
        logging.getLogger().removeHandler(handler)
    logged = written.getvalue()
    assert "rpc failed unexpectedly" in logged and "CheckViolationError" in logged
    assert ROW_DATA_LEFT_OUT in logged
    assert "srv-private-0042" not in logged and "Failing row" not in logged, logged
