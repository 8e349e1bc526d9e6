"""The multi-node check's decisions: arguments, node commands, its verdicts, NCCL's INFO lines,
the table of libraries opened at run time, and the Swarm stack's document and refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from torchkiln import multinode, stack
from torchkiln.errors import UserError
from torchkiln.inimage import links, multirank, ncclnet, runtimelibs
from torchkiln.inimage import multinode as inimage


@pytest.mark.parametrize(
    ("args", "nodes", "rest"),
    [
        (["--nodes", "3", "--allow-cpu"], 3, ["--allow-cpu"]),
        (["--nodes=2"], 2, []),
        (["--service", "full"], None, ["--service", "full"]),
    ],
    ids=["spaced", "equals", "absent"],
)
def test_take_nodes(args, nodes, rest) -> None:
    assert multinode.take_nodes(args) == (nodes, rest)


@pytest.mark.parametrize(
    ("nodes", "args", "gpus", "words"),
    [
        (1, ["--allow-cpu"], 0, "--nodes 1: a multi-node check needs at least 2 nodes"),
        (2, [], 1, "--nodes 2 with NCCL needs one GPU per container, and this machine has 1"),
        (2, ["--allow-cpu", "--port", "0"], 0, "--port '0' is not a TCP port"),
        (2, ["--allow-cpu", "--timeout", "x"], 0, "--timeout 'x' is not a number of seconds"),
        (2, ["--json"], 2, "smoke --nodes takes --allow-cpu, --port and --timeout, not --json"),
    ],
    ids=["one-node", "too-few-gpus", "port", "timeout", "other-flag"],
)
def test_plan_job_refuses_in_one_line(nodes, args, gpus, words) -> None:
    with pytest.raises(UserError) as refused:
        multinode.plan_job("img", nodes, args, gpus)
    assert words in str(refused.value) and "\n" not in str(refused.value)


def test_node_commands_share_one_network_and_rendezvous_on_node0() -> None:
    job = multinode.plan_job("img:1", 3, ["--allow-cpu", "--port", "29400"], 0)
    command = multinode.node_command(job, 2)
    assert command[:3] == ["docker", "run", "-d"]
    assert command[command.index("--pull") + 1] == "never"  # no registry for a missing image
    assert command[command.index("--network") + 1] == job.network
    assert command[command.index("--network-alias") + 1] == "node2"
    assert command[command.index("img:1") + 1 :] == [
        "python", "-m", "torchkiln.inimage.multinode", "--nodes", "3", "--node", "2",
        "--rdzv", "node0:29400", "--timeout", "60", "--run-id", job.run_id, "--allow-cpu",
    ]  # fmt: skip
    assert "--gpus" not in command
    gpu_job = multinode.plan_job("img:1", 2, [], 2)
    gpu_command = multinode.node_command(gpu_job, 1)
    assert gpu_command[gpu_command.index("--gpus") + 1] == "device=1"
    assert multinode.network_command(job)[-1] == job.network
    assert "--internal" in multinode.network_command(job)
    assert multinode.cleanup_commands(job)[0][-3:] == [job.container(k) for k in range(3)]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("node0", "is not HOST:PORT"),
        ("node0:99999", "is not HOST:PORT"),
        (":29500", "is not HOST:PORT"),
    ],
)
def test_parse_endpoint_refuses(text, words) -> None:
    with pytest.raises(inimage.MultinodeInputError, match=words):
        inimage.parse_endpoint(text)
    assert inimage.parse_endpoint("10.0.0.1:29500") == ("10.0.0.1", 29500)


def test_tasks_are_ordered_by_address_not_text() -> None:
    assert inimage.order_addresses(["10.0.1.10", "10.0.1.9", "10.0.1.9"]) == [
        "10.0.1.9",
        "10.0.1.10",
    ]


def test_the_sum_of_bits_names_a_missing_rank() -> None:
    assert multirank.expected_bits(3) == 7
    assert multirank.missing_ranks(0b101, 3) == [1]
    assert multirank.bus_bandwidth(10**9, 1.0, 4) == pytest.approx(1.5)


def rank_line(rank: int, node: int, ok: bool = True, error: str = "") -> str:
    item = {"rank": rank, "node": node, "host": f"node{node}", "rendezvous_s": 1.0, "ok": ok}
    item.update(sum=3, broadcast=2000007, barrier_wait_s=0.5, busbw_gbs=1.25)
    item.update(bandwidth_bytes=16 << 20, transport="TCP", error=error)
    return multirank.RANK_LINE + json.dumps(item)


def test_verdict_is_the_table_when_the_job_passed() -> None:
    ranks = [json.loads(rank_line(k, k)[len(multirank.RANK_LINE) :]) for k in range(2)]
    summary = {"ok": True, "world": 2, "backend": "gloo", "rendezvous_s": 2.0, "ranks": ranks}
    text = "torchrun noise\n" + multirank.SUMMARY + json.dumps(summary)
    shown = inimage.verdict_text(text, ["node 0", "node 1"])
    assert shown.startswith("multi-node check: 2 ranks on 2 host(s), backend gloo, rendezvous")
    assert "all-reduce 3 = 2**2 - 1 on every rank" in shown and shown.endswith("OK")


def test_verdict_names_the_node_that_never_joined_first() -> None:
    text = "\n".join(
        [
            f"{multirank.ERROR}node 0: torchrun exited 1",
            f"{multirank.ERROR}node 2 never joined: no rendezvous at node1:29500 after 15 s",
            rank_line(1, 1, ok=False, error="RuntimeError: boom"),
        ]
    )
    shown = inimage.verdict_text(text, ["node 0", "node 1", "node 2"])
    assert shown == (
        "FAILED: node 2 never joined: no rendezvous at node1:29500 after 15 s (and 2 more)"
    )
    assert inimage.verdict_text("", ["node 0"]) == "FAILED: no summary from node 0"


NCCL_LINES = """\
h:1:1 [0] NCCL INFO NCCL version 2.27.7+cuda13.0
h:1:1 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so.
h:1:1 [0] NCCL INFO NET/IB : No device found.
h:1:1 [0] NCCL INFO NET/Socket : Using [0]eth0:172.18.0.2<0>
h:1:1 [0] NCCL INFO Using network Socket
"""


def test_nccl_info_lines_give_its_network() -> None:
    found = ncclnet.read_info_lines(NCCL_LINES)
    assert (found.network, found.ib_none, found.version) == ("Socket", True, "2.27.7+cuda13.0")
    assert found.text() == "Socket ([0]eth0:172.18.0.2)"
    ib = ncclnet.read_info_lines(
        "x NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/RoCE [RO]; OOB ib0:10.0.0.2<0>\n"
        "x NCCL INFO Using network IB\n"
    )
    assert ib.text() == "IB ([0]mlx5_0:1/IB [1]mlx5_1:1/RoCE [RO])"
    assert ncclnet.read_info_lines("").text() == ""


def test_runtime_libraries_are_asked_for_only_where_nccl_is(tmp_path: Path) -> None:
    providers = tmp_path / "libibverbs"
    providers.mkdir()
    found = {"libibverbs.so.1": "/usr/lib/libibverbs.so.1", "librdmacm.so.1": "/x"}
    assert runtimelibs.missing(["torch/lib/libtorch_cpu.so"], lambda n: "", [str(tmp_path)]) == []
    lost = runtimelibs.missing(["libnccl.so.2"], lambda n: found.get(n, ""), [str(tmp_path)])
    assert [entry.package for entry in lost] == ["ibverbs-providers"]
    (providers / "libmlx5-rdmav34.so").write_text("")
    assert runtimelibs.missing(["libnccl.so.2"], lambda n: found.get(n, ""), [str(tmp_path)]) == []
    lost = runtimelibs.missing(["nvidia/nccl/lib/libnccl.so.2"], lambda n: "", [str(tmp_path)])
    text = runtimelibs.warning_text(lost)
    assert text.startswith(
        "libibverbs.so.1 not found (opened at run time by NCCL's IB transport and NVSHMEM's IB "
        "transports): NCCL: InfiniBand/RoCE unavailable, sockets only; apt-get install libibverbs1"
    )
    assert all(entry.source for entry in runtimelibs.TABLE)


def test_the_link_audit_warns_when_nccl_lacks_a_runtime_library(tmp_path, monkeypatch) -> None:
    elf = shutil.which("true")
    assert elf
    shutil.copy(elf, tmp_path / "libnccl.so.2")
    absent = runtimelibs.RuntimeLibrary(
        "libtorchkiln-absent.so.1", "NCCL", "NCCL: lost", "torchkiln-absent1", "a test"
    )
    monkeypatch.setattr(runtimelibs, "TABLE", (absent,))
    result = links.audit([str(tmp_path)])
    (row,) = [row for row in result.rows if row.package == links.RUNTIME_ROW]
    assert row.status == "warn" and result.ok and result.warned
    assert "libtorchkiln-absent.so.1 not found" in links.verdict(result)
    assert "apt-get install torchkiln-absent1" in links.summary(links.audit_data(result))
    (tmp_path / "libnccl.so.2").rename(tmp_path / "libother.so")
    assert not [
        row for row in links.audit([str(tmp_path)]).rows if row.package == links.RUNTIME_ROW
    ]


def swarm(state="active", manager=True, nodes=2, gpu_nodes=1) -> stack.Swarm:
    return stack.Swarm(state, manager, nodes, gpu_nodes)


@pytest.mark.parametrize(
    ("facts", "nodes", "allow_cpu", "words"),
    [
        (swarm(state="inactive"), 2, False, "not in a swarm (state inactive); make one"),
        (swarm(manager=False), 2, False, "this engine is a swarm worker"),
        (swarm(), 2, False, "--nodes 2 is more than this swarm's 1 ready node(s) with GPUs (of 2)"),
        (swarm(), 0, True, "--nodes 0: pass how many nodes"),
    ],
    ids=["no-swarm", "worker", "too-few-gpu-nodes", "zero"],
)
def test_stack_refusals(facts, nodes, allow_cpu, words) -> None:
    assert words in (stack.refusal(facts, nodes, allow_cpu) or "")
    assert stack.refusal(swarm(), 1, False) is None
    assert stack.refusal(swarm(gpu_nodes=0), 3, True) is None


def test_gpu_nodes_come_from_generic_resources() -> None:
    info = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "Nodes": 6}}
    named = [{"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-1"}}] * 2
    discrete = [{"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 4}}]
    other_kind = [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 4}}]
    ready = {"Status": {"State": "ready"}, "Spec": {"Availability": "active"}}

    def node(generic, **state):
        return {**ready, **state, "Description": {"Resources": {"GenericResources": generic}}}

    nodes = [
        node(named),
        node(discrete),
        {**ready, "Description": {"Resources": {}}},
        node(other_kind),  # the service reserves NVIDIA-GPU: a 'gpu' cannot hold its task
        node(named, Status={"State": "down"}),
        node(named, Spec={"Availability": "drain"}),
    ]
    assert stack.read_swarm(info, nodes) == stack.Swarm("active", True, 6, 2)
    assert stack.gpu_count(named) == 2 and stack.gpu_count(discrete) == 4
    assert stack.gpu_count(other_kind) == 0
    assert stack.can_run_tasks(ready)
    assert not stack.can_run_tasks(
        {"Status": {"State": "ready"}, "Spec": {"Availability": "pause"}}
    )


COMPOSE = {
    "name": "proj",
    "services": {
        "train": {
            "image": "torchkiln/train:latest",
            "user": "1000:1000",
            "working_dir": "/opt/project",
            "shm_size": "16gb",
            "tty": True,
            "environment": {"TZ": "UTC"},
            "build": {"context": "."},
        }
    },
}


def test_the_stack_document_keeps_train_and_adds_what_swarm_needs() -> None:
    settings = stack.StackSettings("proj", 2)
    document = stack.stack_document(COMPOSE, settings)
    train = document["services"]["train"]
    assert "build" not in train and train["image"] == "torchkiln/train:latest"
    assert train["deploy"]["replicas"] == 2
    assert train["deploy"]["placement"] == {"max_replicas_per_node": 1}
    reserved = train["deploy"]["resources"]["reservations"]["generic_resources"]
    assert reserved == [{"discrete_resource_spec": {"kind": "NVIDIA-GPU", "value": 1}}]
    assert train["ulimits"] == {"memlock": {"soft": -1, "hard": -1}}
    assert train["volumes"][0] == {"type": "volume", "source": "project", "target": "/opt/project"}
    assert train["volumes"][1]["tmpfs"] == {"size": 16 << 30}
    assert document["networks"] == {"torchkiln": {"driver": "overlay", "attachable": True}}
    shared = stack.StackSettings("proj", 2, allow_cpu=True, project_path="/shared/proj")
    checking = stack.stack_document(COMPOSE, shared, checking=True)
    assert checking["services"]["train"]["deploy"]["replicas"] == 0
    check = checking["services"]["check"]
    assert check["command"][-4:] == ["tasks.proj_check", "--timeout", "60", "--allow-cpu"]
    assert check["deploy"]["restart_policy"] == {"condition": "none"}
    assert check["tty"] is False and "ulimits" not in check and "volumes" not in checking
    assert check["volumes"][0]["type"] == "bind"


def test_check_verdict_waits_for_every_task() -> None:
    running = [("proj_check.1", "Shutdown", "Complete 1 s ago"), ("proj_check.2", "Running", "x")]
    assert stack.check_verdict("", running, 2) == "FAILED: tasks did not finish: proj_check.2 (x)"
    assert stack.check_verdict("", [], 2) == "FAILED: tasks did not finish: none started"
    assert stack.shm_bytes("512m") == 512 << 20 and stack.shm_bytes("1024") == 1024


def test_swarm_row_is_never_an_error() -> None:
    assert stack.swarm_row(swarm(state="inactive"))[0] == "ok"
    status, detail, fix = stack.swarm_row(swarm(nodes=3, gpu_nodes=2))
    assert detail == (
        "in a swarm of 3 node(s), 2 with GPUs as generic resources; this engine is a manager"
    )
    assert (status, fix) == ("ok", "")


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[2]",
        '{"name": "p", "nodes": 2, "replicas": 2}',  # another version's field
        '{"name": "p"}',  # a field missing
        '{"name": "p", "nodes": "2"}',  # a field of another type
        "\udcff",
    ],
    ids=["not-json", "a-list", "unknown-field", "missing-field", "wrong-type", "not-utf8"],
)
def test_a_damaged_stack_record_is_one_line_naming_the_way_out(tmp_path, text) -> None:
    path = tmp_path / stack.SETTINGS_FILE
    path.parent.mkdir()
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(UserError, match="run invoke stack down; invoke stack up") as raised:
        stack.saved_settings(tmp_path)
    assert "\n" not in str(raised.value)


def test_the_stack_record_lives_in_the_projects_state_folder(tmp_path) -> None:
    from torchkiln import compose

    assert stack.SETTINGS_FILE.startswith(compose.STATE_DIR + "/")
    saved = stack.StackSettings("p", 2, True, "/shared/p", 60)
    (tmp_path / compose.STATE_DIR).mkdir()
    (tmp_path / stack.SETTINGS_FILE).write_text(json.dumps(saved.__dict__))
    assert stack.saved_settings(tmp_path) == saved
