"""scripts/flower_runtime.py: the long-lived ClientApp process answers every task, a failing one
with an Error reply, and keeps serving; the SuperNode's waits are capped, nothing else changed.
(Its rounds on a real TLS deployment: tests/test_deployment.py, through scripts/deploy.sh.)"""

import importlib.util
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import flwr.cli.install
import flwr.clientapp.utils
import flwr.supercore.heartbeat
import flwr.supernode.runtime.run_clientapp as run_clientapp
import pytest
from flwr.app import Message, RecordDict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runtime():
    spec = importlib.util.spec_from_file_location("flower_runtime", ROOT / "scripts" / "flower_runtime.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


class FakeHeartbeat:
    def __init__(self, fn):
        self.running = False

    def start(self):
        self.running = True

    def stop(self):
        self.running = False


@pytest.fixture
def supernode(monkeypatch, runtime):
    """A SuperNode's Runtime API reduced to what serve_task does with it: the tasks it hands out,
    the replies and task outputs pushed back, the FABs installed and apps loaded."""
    node = SimpleNamespace(tasks=[], replies=[], outputs=[], installed=[], loaded=[])

    def pull(client, backoff):
        from flwr.supercore.task_identity import TaskIdentity

        fab_hash, app = node.tasks.pop(0)
        node.app = app
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 3, 7, 1  # as Flower's pull sets them
        message = Message(RecordDict(), dst_node_id=1, message_type="train")
        return (
            message,
            SimpleNamespace(node_id=1, run_id=7),
            SimpleNamespace(fab_id="fl-dp", fab_version="0.1.0"),
            SimpleNamespace(hash_str=fab_hash, content=b"fab"),
        )

    def loader(**kwargs):
        def load(fab_id, fab_version, fab_hash):
            node.loaded.append(fab_hash)
            return lambda message, context: node.app(message, context)

        return load

    monkeypatch.setattr(runtime, "runtime_client", lambda *a: SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(runtime, "pull_task_input", pull)
    monkeypatch.setattr(flwr.supercore.heartbeat, "HeartbeatSender", FakeHeartbeat)
    monkeypatch.setattr(flwr.supercore.heartbeat, "make_task_heartbeat_fn_http", lambda client: None)
    monkeypatch.setattr(flwr.cli.install, "install_from_fab", lambda content, skip_prompt: node.installed.append(content))
    monkeypatch.setattr(flwr.clientapp.utils, "get_load_client_app_fn", loader)
    monkeypatch.setattr(run_clientapp, "push_message", lambda client, reply, context: node.replies.append(reply))
    monkeypatch.setattr(run_clientapp, "push_task_output", lambda **kw: node.outputs.append(kw["sub_status"]))
    return node


def _answer(message, context):
    return Message(RecordDict(), reply_to=message)


def _raise(message, context):
    raise ValueError("a broken client")


def test_one_process_serves_every_task_and_a_failing_task_answers_with_an_error(runtime, supernode):
    state = runtime.WarmState()
    supernode.tasks = [("f1", _answer), ("f1", _raise), ("f1", _answer)]
    for _ in range(3):
        runtime.serve_task("127.0.0.1:9094", "token", True, None, state)
    # the FAB installed and the app imported once, for all three tasks
    assert supernode.installed == [b"fab"] and supernode.loaded == ["f1"]
    assert (state.served, state.failed) == (2, 1)
    replies = supernode.replies
    assert [r.has_error() for r in replies] == [False, True, False]
    assert "a broken client" in replies[1].error.reason
    assert supernode.outputs == ["completed", "failed", "completed"]


def test_a_task_of_another_app_is_refused_by_name_not_run_with_the_imported_one(runtime, supernode):
    state = runtime.WarmState()
    supernode.tasks = [("f1" * 8, _answer), ("f2" * 8, _answer)]
    runtime.serve_task("a", "t", True, None, state)
    runtime.serve_task("a", "t", True, None, state)
    assert supernode.loaded == ["f1" * 8]
    assert supernode.replies[1].has_error() and "f2f2f2f2f2f2" in supernode.replies[1].error.reason


def test_serve_hands_other_task_types_to_flowers_subprocess_executor_and_survives_a_lost_supernode(runtime, monkeypatch):
    from flwr.supercore.constant import TaskType

    answers = [
        RuntimeError("connection refused"),  # the SuperNode restarting
        SimpleNamespace(
            HasField=lambda f: True, token="t1", task=SimpleNamespace(type=TaskType.CLIENT_APP, fab_hash="", task_id=1)
        ),
        SimpleNamespace(
            HasField=lambda f: True, token="t2", task=SimpleNamespace(type=TaskType.SERVER_APP, fab_hash="", task_id=2)
        ),
        SimpleNamespace(
            HasField=lambda f: True, token="t3", task=SimpleNamespace(type=TaskType.CLIENT_APP, fab_hash="", task_id=3)
        ),
    ]

    def acquire(request):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    served, handed = [], []

    def serve_task(address, token, insecure, certificates, state):
        served.append(token)
        if token == "t3":
            raise OSError("SuperNode gone mid-task")
        state.served += 1

    monkeypatch.setattr(runtime, "runtime_client", lambda *a: SimpleNamespace(AcquireTask=acquire, close=lambda: None))
    monkeypatch.setattr(runtime, "serve_task", serve_task)
    monkeypatch.setattr(runtime, "hand_off", lambda address, token, task, insecure, roots: handed.append(token))
    monkeypatch.setattr(runtime.time, "sleep", lambda s: None)
    state = runtime.serve("127.0.0.1:9094", True, None, max_tasks=2)
    assert served == ["t1", "t3"] and handed == ["t2"]
    assert (state.served, state.failed, state.handed_off) == (1, 1, 1)


def test_short_sleeps_cap_the_supernode_waits_and_keep_the_rest_of_time(runtime, monkeypatch):
    slept = []
    monkeypatch.setattr(runtime.time, "sleep", slept.append)
    short = runtime.ShortSleeps(0.1)
    short.sleep(3)
    short.sleep(0.05)
    assert slept == [0.1, 0.05]
    assert short.monotonic is time.monotonic


def test_it_refuses_a_flower_version_it_was_not_written_against(runtime):
    runtime.check_flower_version(runtime.SUPPORTED_FLOWER[0])
    with pytest.raises(SystemExit, match="1.43.0"):
        runtime.check_flower_version("1.43.0")


def test_it_imports_nothing_of_fl_dp_so_the_app_comes_from_the_installed_fab():
    import subprocess

    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='not_main'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fl_dp', 'clients', 'strategies', 'torch')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "scripts" / "flower_runtime.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert out.stdout.strip() == "[]"


def _http_refusal(code):
    import json

    import httpx

    request = httpx.Request("POST", "https://superlink/v1/fleet/activate-node")
    response = httpx.Response(412, request=request, text=json.dumps({"code": code, "detail": "Failed to activate SuperNode."}))
    return httpx.HTTPStatusError("412", request=request, response=response)


class RefusingFleetClient:
    """Refuses activation ``refusals`` times with ``code``, then activates."""

    def __init__(self, refusals, code):
        self.refusals, self.code, self.asked = refusals, code, 0

    def ActivateNode(self, request):  # noqa: N802
        self.asked += 1
        if self.asked <= self.refusals:
            raise _http_refusal(self.code)
        return f"activated {request}"


def test_a_supernode_restarted_while_its_old_session_counts_as_online_waits_and_activates(runtime, monkeypatch):
    from flwr.supercore.error.base import ApiErrorCode

    slept = []
    monkeypatch.setattr(runtime.time, "sleep", slept.append)
    patient = runtime.patient_activation(RefusingFleetClient, 5.0, 150.0)
    client = patient(3, int(ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED))
    assert client.ActivateNode("node") == "activated node"
    assert client.asked == 4 and slept == [5.0, 5.0, 5.0]


def test_other_refusals_and_a_refusal_past_the_patience_still_end_the_supernode(runtime, monkeypatch):
    import httpx
    from flwr.supercore.error.base import ApiErrorCode

    monkeypatch.setattr(runtime.time, "sleep", lambda s: None)
    other = runtime.patient_activation(RefusingFleetClient, 5.0, 150.0)(1, int(ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED) + 1)
    with pytest.raises(httpx.HTTPStatusError):
        other.ActivateNode("node")
    assert other.asked == 1  # not an activation refusal: Flower's own handling (exit 305) applies
    impatient = runtime.patient_activation(RefusingFleetClient, 5.0, 0.0)(10, int(ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED))
    with pytest.raises(httpx.HTTPStatusError):
        impatient.ActivateNode("node")
    assert impatient.asked == 1


def test_the_supernode_runs_with_the_patient_activation(runtime, monkeypatch):
    import flwr.supernode.cli
    import flwr.supernode.fleet_http_connection as fleet_connection
    import flwr.supernode.start_client_internal as supernode_loop

    for module, name in ((fleet_connection, "FleetHttpClient"), (supernode_loop, "time"), (supernode_loop, "pull_objects")):
        monkeypatch.setattr(module, name, getattr(module, name))
    monkeypatch.setattr(flwr.supernode.cli, "flower_supernode", lambda: 0)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    original = fleet_connection.FleetHttpClient
    assert runtime.run_supernode(["--insecure"], 0.1) == 0
    assert issubclass(fleet_connection.FleetHttpClient, original) and fleet_connection.FleetHttpClient is not original


def _node_state_with_a_pulled_message(run_id=7, state=None):
    """A SuperNode's state as ``_pull_and_store_message`` leaves it: a task created, then its message."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    state = state or InMemoryNodeState(ObjectStoreFactory().store())
    task_id = state.create_task(task_type=TaskType.CLIENT_APP, run_id=run_id, fab_hash="f")
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task_id, run_id, 1  # a Message takes them from its task
    message = Message(RecordDict(), dst_node_id=1, message_type="train")
    message.metadata.__dict__["_message_id"] = message.object_id
    state.store_message(message)
    return state, task_id, message


def _reply_to(state, message):
    """A reply to ``message`` stored as a ClientApp's push stores it."""
    reply = Message(RecordDict(), reply_to=message)
    reply.metadata.__dict__["_message_id"] = reply.object_id
    state.store_message(reply)
    return reply


def _replies(state):
    return [e.message for e in state.msg_store.values() if e.message.metadata.reply_to_message_id]


def test_a_message_whose_task_finished_without_a_reply_is_answered_so_the_supernode_pulls_again(runtime):
    from flwr.common.constant import SubStatus

    state, task_id, message = _node_state_with_a_pulled_message()
    assert runtime.answer_orphaned_messages(state) == 0  # its task is pending: a ClientApp will answer
    token = state.claim_task(task_id)
    assert token and state.activate_task(task_id)
    assert runtime.answer_orphaned_messages(state) == 0  # running
    assert state.finish_task(task_id, SubStatus.FAILED, "pushing the reply failed")
    assert runtime.answer_orphaned_messages(state) == 1
    (reply,) = _replies(state)
    assert reply.metadata.reply_to_message_id == message.metadata.message_id and reply.has_error()
    assert runtime.answer_orphaned_messages(state) == 0  # answered once


def test_a_message_with_its_reply_or_a_live_task_of_its_run_is_left_to_flower(runtime):
    from flwr.common.constant import SubStatus

    state, task_id, message = _node_state_with_a_pulled_message()
    state.claim_task(task_id)
    state.activate_task(task_id)
    _reply_to(state, message)
    assert state.finish_task(task_id, SubStatus.COMPLETED, "")
    assert runtime.answer_orphaned_messages(state) == 0
    assert len(_replies(state)) == 1


def test_flowers_endless_wait_for_a_reply_ends_on_an_orphaned_message(runtime):
    from flwr.common.constant import SubStatus

    state, task_id, message = _node_state_with_a_pulled_message()
    state.finish_task(task_id, SubStatus.FAILED, "the ClientApp failed before it held the message")
    pushed = []

    def flowers_push_messages(*, state, object_store, send, push_object):
        (reply,) = state.get_messages_legacy(is_reply=True)  # Flower's own wait, which returns at once now
        pushed.append(reply)

    runtime.never_wedged(flowers_push_messages, 0.01)(state=state, object_store=None, send=None, push_object=None)
    assert pushed[0].metadata.reply_to_message_id == message.metadata.message_id and pushed[0].has_error()


def _pushing_in_a_thread(runtime, state):
    """never_wedged around a stand-in for Flower's push, run in a thread: (thread, what it pushed)."""
    pushed = []

    def flowers_push_messages(*, state, object_store, send, push_object):
        pushed.extend(state.get_messages_legacy(is_reply=True))

    wedged_push = runtime.never_wedged(flowers_push_messages, 0.01)
    thread = threading.Thread(
        target=wedged_push, kwargs=dict(state=state, object_store=None, send=None, push_object=None), daemon=True
    )
    thread.start()
    return thread, pushed


def test_a_stale_reply_does_not_end_the_wait_for_the_reply_to_the_message_just_pulled(runtime):
    """A stopped run's reply still in the state must not be pushed in place of the awaited one:
    the node then pulled again and answered every later round one round late."""
    state, _, stopped_runs_message = _node_state_with_a_pulled_message(run_id=3)
    stale = _reply_to(state, stopped_runs_message)
    state.delete_messages(message_ids=[stopped_runs_message.metadata.message_id])  # dropped when its run stopped
    _, task_id, message = _node_state_with_a_pulled_message(run_id=7, state=state)
    state.claim_task(task_id)
    state.activate_task(task_id)
    thread, pushed = _pushing_in_a_thread(runtime, state)
    thread.join(0.3)
    assert thread.is_alive() and not pushed  # still waiting: the stale reply is not the one awaited
    awaited = _reply_to(state, message)
    thread.join(5)
    assert not thread.is_alive()
    assert {m.metadata.message_id for m in pushed} == {stale.metadata.message_id, awaited.metadata.message_id}


def test_a_node_holding_two_unanswered_messages_of_a_run_catches_up_within_the_round(runtime):
    """One task for two messages (the node one round behind): the task answers the older one, the
    newer is answered with Flower's Error once no task can answer it, and both replies go out."""
    from flwr.common.constant import SubStatus

    state, old_task, older = _node_state_with_a_pulled_message()
    state.claim_task(old_task)
    state.activate_task(old_task)
    assert state.finish_task(old_task, SubStatus.COMPLETED, "")  # its task answered another message
    _, task_id, newer = _node_state_with_a_pulled_message(state=state)
    state.claim_task(task_id)
    state.activate_task(task_id)
    thread, pushed = _pushing_in_a_thread(runtime, state)
    thread.join(0.3)
    assert thread.is_alive() and not pushed
    _reply_to(state, older)
    assert state.finish_task(task_id, SubStatus.COMPLETED, "")
    thread.join(5)
    assert not thread.is_alive()
    answered = {m.metadata.reply_to_message_id: m for m in pushed}
    assert set(answered) == {older.metadata.message_id, newer.metadata.message_id}
    assert answered[newer.metadata.message_id].has_error() and not answered[older.metadata.message_id].has_error()


def test_with_nothing_unanswered_and_nothing_to_push_the_node_pulls_again(runtime):
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    thread, pushed = _pushing_in_a_thread(runtime, InMemoryNodeState(ObjectStoreFactory().store()))
    thread.join(5)
    assert not thread.is_alive() and not pushed


def test_a_reply_pushed_before_its_runs_stop_reached_the_supernode_is_dropped_with_its_message(runtime):
    """The stop may reach the SuperNode as it confirms the receipt, after the ClientApp answered."""
    from flwr.common.constant import Status
    from flwr.supercore.object_store import ObjectStoreFactory

    holder = {}

    def flowers_pull(*, state, object_store):
        _, task_id, message = _node_state_with_a_pulled_message(state=state)
        holder.update(task_id=task_id, reply=_reply_to(state, message))
        return None  # RunNotRunningException at ConfirmMessageReceived

    state, _, other = _node_state_with_a_pulled_message(run_id=3)
    other_reply = _reply_to(state, other)
    assert runtime.abandoning_stopped_runs(flowers_pull)(state=state, object_store=ObjectStoreFactory().store()) is None
    assert holder["reply"].metadata.message_id not in state.msg_store
    assert {other.metadata.message_id, other_reply.metadata.message_id} <= set(state.msg_store)
    (task,) = state.get_tasks(task_ids=[holder["task_id"]])
    assert task.status.status == Status.FINISHED


def test_a_message_stranded_by_its_run_stopping_while_received_is_dropped_and_its_task_closed(runtime):
    """Flower's RunNotRunningException is a BaseException: its handler returns None and leaves the
    message, without its parts, and the task that a ClientApp may already hold."""
    from flwr.common.constant import Status
    from flwr.supercore.object_store import ObjectStoreFactory

    holder = {}

    def flowers_pull(*, state, object_store, stopped):
        _, task_id, message = _node_state_with_a_pulled_message(state=state)
        holder.update(task_id=task_id, message=message)
        return None if stopped else message.metadata.run_id

    for stopped in (False, True):
        state, _, old = _node_state_with_a_pulled_message(run_id=3)  # another run's message, left alone
        store = ObjectStoreFactory().store()
        returned = runtime.abandoning_stopped_runs(flowers_pull)(state=state, object_store=store, stopped=stopped)
        (task,) = state.get_tasks(task_ids=[holder["task_id"]])
        kept = holder["message"].metadata.message_id in state.msg_store
        assert old.metadata.message_id in state.msg_store
        if stopped:
            assert returned is None and not kept and task.status.status == Status.FINISHED
        else:
            assert returned == 7 and kept and task.status.status == Status.PENDING


def test_a_closed_tasks_401_fails_the_call_instead_of_ending_the_long_lived_process(runtime, monkeypatch):
    import httpx

    killed = []
    monkeypatch.setattr("os.kill", lambda pid, sig: killed.append(sig))
    invoker = runtime.long_lived_retry_invoker()
    request = httpx.Request("POST", "http://127.0.0.1:9094/x")

    def failing(status):
        def call():
            raise httpx.HTTPStatusError("", request=request, response=httpx.Response(status, request=request))

        return call

    with pytest.raises(httpx.HTTPStatusError):
        invoker.invoke(failing(401))
    assert killed == []  # Flower's own invoker SIGINTs its process here
    assert invoker.should_giveup(httpx.HTTPStatusError("", request=request, response=httpx.Response(404, request=request)))


@pytest.mark.parametrize("argv, env, message", [
    (["supernode"], {"FL_DP_SUPERNODE_POLL_SECONDS": "abc"}, "FL_DP_SUPERNODE_POLL_SECONDS must be a number of seconds in (0, 60], got 'abc'"),
    (["supernode"], {"FL_DP_SUPERNODE_POLL_SECONDS": "0"}, "FL_DP_SUPERNODE_POLL_SECONDS must be"),
    (["supernode"], {"FL_DP_SUPERNODE_POLL_SECONDS": "nan"}, "FL_DP_SUPERNODE_POLL_SECONDS must be"),
    (["clientapp", "--insecure", "--poll-seconds", "-1"], {}, "--poll-seconds must be in (0, 60], got -1.0"),
])
def test_a_bad_poll_interval_stops_the_start_naming_it(runtime, monkeypatch, capsys, argv, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        runtime.main(argv)
    assert message in f"{exit_info.value.code} {capsys.readouterr().err}"
