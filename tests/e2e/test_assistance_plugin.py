"""An assistance type that lives outside the core: the prosthesis plugin under
tests/plugins/ is pip-installed into this environment, a fresh assistance service picks it
up through its entry point, and the new type runs its whole lifecycle over gRPC.

The plugin is uninstalled afterwards, so the environment is left as it was found: the
other tests see only the shipped types, and the plugin guide's example starts clean."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from mineaction.assistance.v1 import assistance_service_pb2 as pb
from mineaction.assistance.v1 import assistance_service_pb2_grpc as pb_grpc
from services.assistance.service import SPEC
from services.common.auth import ROLES, mint_with_settings
from services.common.channels import open_channel
from services.common.config import Settings
from services.common.errors import reason_of
from services.common.server import ServiceHost
from tests.conftest import Cluster
from tests.integration.test_assistance_service import (
    advance,
    assert_writes_nothing,
    record_need,
    request,
    struct,
    violations,
)

PLUGIN = Path(__file__).parents[1] / "plugins" / "prosthesis_plugin"


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        capture_output=True,
    )


@pytest_asyncio.fixture(scope="module")
async def with_prosthesis(cluster: Cluster) -> AsyncIterator[pb_grpc.AssistanceServiceStub]:
    pip("install", "--no-deps", "--no-build-isolation", str(PLUGIN))
    importlib.invalidate_caches()
    # The cluster's settings: this host asks the cluster's eligibility about consent.
    host = ServiceHost(SPEC, cluster.settings, address="127.0.0.1:0")
    try:
        await host.start()
        token = mint_with_settings(cluster.settings, subject="tester", roles=ROLES)
        async with open_channel(f"127.0.0.1:{host.port}", token) as channel:
            yield pb_grpc.AssistanceServiceStub(channel)
    finally:
        await host.stop(grace=1)
        pip("uninstall", "-y", "mineaction-prosthesis")


@pytest.mark.timeout(90)
async def test_an_installed_plugin_type_runs_its_whole_lifecycle(
    with_prosthesis: pb_grpc.AssistanceServiceStub, cluster: Cluster
) -> None:
    stub = with_prosthesis
    types = await stub.ListAssistanceTypes(pb.ListAssistanceTypesRequest())
    [prosthesis] = [t for t in types.assistance_types if t.type_id == "prosthesis"]
    assert prosthesis.name.az == "Protez"
    assert prosthesis.capacity_model == pb.CAPACITY_MODEL_NONE
    assert list(prosthesis.follow_up_days) == [30, 180, 365]
    assert "prosthesis_limb_loss" in prosthesis.eligibility_rules_yaml

    need = await record_need(cluster, "prosthesis", via=stub, district="fuzuli")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await request(stub, need.need_id, data=struct(limb="knee"))
    assert set(violations(err.value)) == {"data.limb", "data.side"}

    # Referred straight to a provider (the type has no pools): one of a kind that fits
    # prostheses, not the carpet workshop.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await request(
            stub,
            need.need_id,
            provider_id="aghjabadi-carpet-workshop",
            data=struct(limb="below_knee", side="left"),
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(err.value) == "PROVIDER_KIND_MISMATCH"
    assert "aghjabadi-carpet-workshop is a WORKSHOP provider" in (err.value.details() or "")
    referral = await request(
        stub,
        need.need_id,
        provider_id="ganja-prosthetic-centre",
        data=struct(limb="below_knee", side="left"),
    )
    assert (referral.state, referral.provider_id) == ("referred", "ganja-prosthetic-centre")
    await advance(stub, referral.assistance_id, "take_cast")
    fitted = await advance(stub, referral.assistance_id, "fit", component_ref="PTB-socket-27")
    assert len(fitted.follow_up_dates) == 3
    await advance(stub, referral.assistance_id, "complete_gait_training")
    done = await advance(stub, referral.assistance_id, "follow_up")
    assert done.state == "followed_up"
    assert [e.to_state for e in done.history] == [
        "referred",
        "cast_taken",
        "delivered",
        "gait_trained",
        "followed_up",
    ]


async def test_a_referral_of_the_plugin_type_without_consent_writes_nothing(
    with_prosthesis: pb_grpc.AssistanceServiceStub, cluster: Cluster
) -> None:
    need = await record_need(cluster, "prosthesis", via=with_prosthesis)
    await assert_writes_nothing(
        cluster,
        request(
            with_prosthesis,
            need.need_id,
            provider_id="ganja-prosthetic-centre",
            referral_consent=False,
            data=struct(limb="above_knee", side="right"),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


# Last in this module: it uninstalls the plugin (the fixture's own uninstall then finds
# nothing to do).
async def test_an_uninstalled_types_records_stay_listable_by_it(
    settings: Settings, with_prosthesis: pb_grpc.AssistanceServiceStub, cluster: Cluster
) -> None:
    """A plugin uninstalled, its type leaves the catalogue but not the records: lists
    filtered by it still find them; a type that never had any is still refused."""
    need = await record_need(cluster, "prosthesis", via=with_prosthesis, district="fuzuli")
    referral = await request(
        with_prosthesis,
        need.need_id,
        provider_id="ganja-prosthetic-centre",
        data=struct(limb="above_knee", side="right"),
    )
    pip("uninstall", "-y", "mineaction-prosthesis")
    importlib.invalidate_caches()
    host = ServiceHost(SPEC, settings, address="127.0.0.1:0")
    await host.start()
    try:
        token = mint_with_settings(settings, subject="tester", roles=ROLES)
        async with open_channel(f"127.0.0.1:{host.port}", token) as channel:
            stub = pb_grpc.AssistanceServiceStub(channel)
            types = await stub.ListAssistanceTypes(pb.ListAssistanceTypesRequest())
            assert "prosthesis" not in {t.type_id for t in types.assistance_types}
            needs = await stub.ListNeeds(
                pb.ListNeedsRequest(type_id="prosthesis", survivor_id=need.survivor_id)
            )
            assert [n.need_id for n in needs.needs] == [need.need_id]
            listed = await stub.ListAssistance(
                pb.ListAssistanceRequest(type_id="prosthesis", survivor_id=need.survivor_id)
            )
            assert [a.assistance_id for a in listed.assistance] == [referral.assistance_id]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListNeeds(pb.ListNeedsRequest(type_id="jetpack"))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unknown assistance type 'jetpack'" in (refused.value.details() or "")
    finally:
        await host.stop(grace=1)
