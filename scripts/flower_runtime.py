"""A SuperNode's processes for fast deployment rounds on flwr 1.42: the SuperNode with short polls,
and one long-lived ClientApp process that serves all its messages.

    python scripts/flower_runtime.py supernode [flower-supernode options] --isolation process --port 9094
    python scripts/flower_runtime.py clientapp --runtime-api-address 127.0.0.1:9094 --insecure

``supernode``: flower-supernode, except that its waits (3 s between two empty pulls from the
SuperLink, 0.5 s while a reply is pending, 1 s before pulling again a part of a message that has
not reached the SuperLink yet; ``flwr/supernode/start_client_internal.py``) last at most
``FL_DP_SUPERNODE_POLL_SECONDS`` (default 0.1 s; the retries double up to 1 s). The messages and
their order are Flower's; only how soon the node asks again changes. Upstream change that would
remove it: a ``--poll-interval`` option of flower-supernode.

It also outwaits a SuperLink that refuses to activate it because the node's previous session,
ended by a crash, still counts as online (Flower keeps a node online for two heartbeats, 60 s,
after its last one; flower-supernode exits at once with exit code 305 then, so a node restarted
within a minute of a crash never came back): :class:`PatientActivation` asks again every
:data:`ACTIVATION_RETRY_SECONDS` for up to :data:`ACTIVATION_PATIENCE_SECONDS`, logging why.
(Flower's HTTP Fleet transport, flower-supernode's default in 1.42.) Upstream change: flower-supernode
retrying a refused activation until the old session expires.

It cleans up after a run stopped while one of its messages was being received (Flower leaves
the message without its parts and its task open, and the ClientApp that took the task asked for
the parts for 500 tries, about 8 minutes, serving nothing else: :func:`abandoning_stopped_runs`).
It also never waits forever for a reply that cannot come: flower-supernode waits after each
message for its reply with no end, and a ClientApp task that finishes without pushing one (it
failed before it held the message, or pushing the reply failed) left the node pulling nothing
again; :func:`answer_orphaned_messages` answers such a message with Flower's own "ClientApp
stopped responding" Error. Upstream change: the same in ``InMemoryNodeState.finish_task``.
And it pushes once the message it holds has its reply, not on any reply (:func:`never_wedged`):
a stale reply from a stopped run put the node one round behind for the rest of the next run.

``clientapp``: Flower 1.42's own SuperExec (``flower-superexec``) starts a new ``flwr-clientapp`` process for
every task, and ``flwr-clientapp`` serves one task and exits
(``flwr/supernode/runtime/run_clientapp.py``), so a deployment round pays Python's, torch's and
opacus' imports (about 6 s on two cores) on every SuperNode. This loop claims tasks from the
SuperNode's Runtime API as ``flower-superexec`` does (``AcquireTask``) and runs each through the
same steps as ``run_clientapp`` (pull message, context, run and FAB; install the FAB; load the
ClientApp; push the reply and the context), without exiting between them. Python cannot unload
the first app's modules, so a task whose FAB hash is announced and differs from the imported app's
(and any task that is not a ClientApp task) is handed to Flower's own subprocess executor, and one
whose other FAB shows only once pulled is answered with an Error naming both hashes.

Version-pinned: it uses Flower internals of 1.42.0 (``run_clientapp.push_message`` and
``push_task_output``, the steps of ``run_clientapp.pull_task_input``, ``RuntimeHttpClient``) and
refuses to start on another version. The upstream change that would make it unnecessary: a ``--max-tasks N`` (or
``--keep-alive``) option of ``flwr-clientapp`` that loops over ``AcquireTask`` itself.

It imports nothing of fl-dp: the app's packages must come from the installed FAB, as in a fresh
``flwr-clientapp`` process.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flwr
from flwr.common.constant import Status, SubStatus

SUPPORTED_FLOWER = ("1.42.0",)
#: first retry of a message part the SuperNode has not stored yet (Flower's: 1 s)
PART_RETRY_SECONDS = 0.02
log = logging.getLogger("fl-dp.flower-runtime")


@dataclass
class WarmState:
    """What this process keeps across tasks: the one app it has imported, and counts."""

    fab_hash: str = ""
    client_app: Any = None
    served: int = 0
    handed_off: int = 0
    failed: int = 0


def check_flower_version(version: str = flwr.__version__) -> None:
    if version not in SUPPORTED_FLOWER:
        raise SystemExit(
            f"flower_runtime.py is written against flwr {', '.join(SUPPORTED_FLOWER)}, found {version}: "
            "use flower-supernode itself (FL_DP_WARM_CLIENTAPP=0 in scripts/deploy.sh)"
        )


class ShortSleeps:
    """Stands in for the ``time`` module of Flower's SuperNode loop: sleeps at most ``limit`` s."""

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.limit))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


#: seconds between two activation requests while the SuperLink still counts the node's old session online
ACTIVATION_RETRY_SECONDS = 5.0
#: how long to keep asking: the old session's two heartbeats (60 s), with a margin
ACTIVATION_PATIENCE_SECONDS = 150.0


def activation_refused(err: Exception) -> bool:
    """Whether ``err`` is the SuperLink refusing to activate a node that it still counts as online."""
    import httpx
    from flwr.supercore.error.base import ApiErrorCode, FlowerError

    if not isinstance(err, httpx.HTTPStatusError):
        return False
    refusal = FlowerError.from_json(err.response.text)
    return refusal is not None and refusal.code == ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED


def patient_activation(client_class: type, retry_seconds: float, patience_seconds: float) -> type:
    """``client_class`` (Flower's ``FleetHttpClient``) whose ``ActivateNode`` asks again while the
    SuperLink refuses because the node's previous session has not expired yet."""

    class PatientActivation(client_class):  # type: ignore[misc, valid-type]
        def ActivateNode(self, request: Any) -> Any:  # noqa: N802 - Flower's name
            deadline = time.monotonic() + patience_seconds
            while True:
                try:
                    return super().ActivateNode(request)
                except Exception as err:
                    if not activation_refused(err) or time.monotonic() >= deadline:
                        raise
                    log.warning(
                        "the SuperLink refuses to activate this SuperNode: its previous session still counts as "
                        "online (up to 2 heartbeats after it stopped); asking again in %.0f s",
                        retry_seconds,
                    )
                    time.sleep(retry_seconds)

    return PatientActivation


#: the statuses of a task that may still answer its message
UNFINISHED = (Status.PENDING, Status.STARTING, Status.RUNNING)


def unanswered_messages(state: Any) -> dict[str, Any]:
    """The SuperNode's stored messages (not replies) that no stored reply answers, by message ID."""
    with state.lock_msg_store:
        entries = list(state.msg_store.values())
    replied = {e.message.metadata.reply_to_message_id for e in entries if e.message.metadata.reply_to_message_id}
    return {
        e.message.metadata.message_id: e
        for e in entries
        if not e.message.metadata.reply_to_message_id and e.message.metadata.message_id not in replied
    }


def answer_orphaned_messages(state: Any) -> int:
    """Store a "ClientApp stopped responding" Error reply for every message that no live task can
    answer any more, and return how many.

    flower-supernode waits for a reply after each message it pulls, with no end
    (``_push_messages`` in ``flwr/supernode/start_client_internal.py``); Flower writes an Error reply
    only when a running task's heartbeat lapses. A ClientApp task that *finishes* without having
    pushed a reply (it failed before it held the message, or pushing the reply failed, then
    ``push_task_output`` closed it) leaves the node waiting forever: it pulls no message again, and
    every later round of every run times out on it. A message is orphaned when it has no reply and
    no task of its run is pending, starting or running. Upstream change: the SuperNode answering a
    message whose run has no unfinished task, as ``InMemoryNodeState.finish_task`` already does for
    an AgentApp that failed."""
    from flwr.supernode.nodestate.in_memory_nodestate import CLIENT_APP_CRASHED_ERROR

    # messages first, then tasks: a message is stored after its task is created, and a task pushes
    # its reply before it finishes, so looking again after the tasks leaves no race
    before = unanswered_messages(state)
    if not before:
        return 0
    # polled while a reply is awaited: only the unfinished tasks of these messages' runs, not every task kept
    runs_awaited = sorted({entry.message.metadata.run_id for entry in before.values()})
    live_runs = {task.run_id for task in state.get_tasks(run_ids=runs_awaited, statuses=UNFINISHED)}
    orphans = [entry for message_id, entry in unanswered_messages(state).items() if message_id in before]
    orphans = [entry for entry in orphans if entry.message.metadata.run_id not in live_runs]
    if not orphans:
        return 0
    with state.lock_msg_store:
        for entry in orphans:
            entry.is_retrieved = True  # Flower answers only messages a task has taken
    runs = {entry.message.metadata.run_id for entry in orphans}
    log.warning(
        "%d message(s) of run(s) %s have no reply and no live ClientApp task: answering them with "
        "Flower's ClientApp-stopped-responding Error so this node pulls again",
        len(orphans),
        sorted(runs),
    )
    state._store_error_replies(runs, CLIENT_APP_CRASHED_ERROR)
    return len(orphans)


def abandoning_stopped_runs(pull_and_store_message: Any) -> Any:
    """Flower's ``_pull_and_store_message``, cleaning up after a run stopped while its message was received.

    Flower's ``RunNotRunningException`` is a ``BaseException``: when the run stops while the SuperNode
    pulls the parts of a message it has already stored (with a task for it), the handler meant for
    failed pulls does not run, and the message stays without its parts, its task unfinished. The
    ClientApp that took the task then asks for the missing parts for 500 tries (500.7 s measured),
    and this runtime's one ClientApp process served nothing else: a resumed run lost the node every
    round. Here the run's unfinished tasks are closed as failed, so the ClientApp's next request
    is refused and it moves on, and the message, its parts and any reply to it are deleted (the stop
    may reach the SuperNode as it confirms the message's receipt, after its ClientApp has already
    answered it; :func:`never_wedged` says what such a reply did). Upstream change: catch
    ``RunNotRunningException`` around the parts' pull as the other failures are."""

    def pull(*, state: Any, object_store: Any, **kwargs: Any) -> Any:
        with state.lock_msg_store:
            before = set(state.msg_store)
        run_id = pull_and_store_message(state=state, object_store=object_store, **kwargs)
        if run_id is not None:
            return run_id
        with state.lock_msg_store:
            stranded = [
                e.message
                for key, e in state.msg_store.items()
                if key not in before and not e.message.metadata.reply_to_message_id
            ]
        for message in stranded:
            # the task first: once it is closed its ClientApp can push no reply (401)
            for task in state.get_tasks(run_ids=[message.metadata.run_id], statuses=UNFINISHED):
                state.finish_task(task.task_id, SubStatus.FAILED, "the run stopped while its message was received")
            with state.lock_msg_store:
                replies = [
                    key
                    for key, e in state.msg_store.items()
                    if e.message.metadata.reply_to_message_id == message.metadata.message_id
                ]
            state.delete_messages(message_ids=[message.metadata.message_id, *replies])
            for message_id in (message.metadata.message_id, *replies):
                object_store.delete(message_id)
            log.warning(
                "run %s stopped while its message %s was received: message dropped, its task closed",
                message.metadata.run_id,
                message.metadata.message_id[:12],
            )
        return None

    return pull


def never_wedged(push_messages: Any, poll_seconds: float) -> Any:
    """Flower's ``_push_messages``, entered once every message this node holds has its reply (an
    orphaned one answered by :func:`answer_orphaned_messages`), so that its own endless wait always
    ends and the reply it pushes is the one the SuperLink awaits now.

    Flower's wait ends on *any* reply not yet pushed. A reply left over from a stopped run (its
    ClientApp pushed it just before the run's stop reached the SuperNode) ended the wait for the
    next run's first message at once: the SuperNode pushed the stale reply, pulled again, and the
    current reply waited in its state for the next message, one round-timeout later; from then on
    the node answered every round one round late, each round lasting its timeout (a CI run of
    test_deployment_faults: 120 s a round after a resume, the only sequence found in the code that
    gives it). With nothing left to push and nothing unanswered the node pulls again without
    entering Flower's wait."""

    def push(*, state: Any, **kwargs: Any) -> None:
        while True:
            answer_orphaned_messages(state)
            if not unanswered_messages(state):
                break
            time.sleep(poll_seconds)
        with state.lock_msg_store:
            if not any(e.message.metadata.reply_to_message_id and not e.is_retrieved for e in state.msg_store.values()):
                return
        push_messages(state=state, **kwargs)

    return push


def run_supernode(argv: list[str], poll_seconds: float) -> int:
    """flower-supernode with ``argv``, its waits shortened to ``poll_seconds``, its activation patient."""
    check_flower_version()
    import flwr.supernode.fleet_http_connection as fleet_connection
    import flwr.supernode.start_client_internal as supernode_loop
    from flwr.supernode.cli import flower_supernode

    fleet_connection.FleetHttpClient = patient_activation(  # type: ignore[misc]
        fleet_connection.FleetHttpClient, ACTIVATION_RETRY_SECONDS, ACTIVATION_PATIENCE_SECONDS
    )

    supernode_loop.time = ShortSleeps(poll_seconds)  # type: ignore[assignment]
    supernode_loop._pull_and_store_message = abandoning_stopped_runs(supernode_loop._pull_and_store_message)
    supernode_loop._push_messages = never_wedged(supernode_loop._push_messages, max(poll_seconds, 0.05))
    # a message's objects may reach the SuperLink after the message: retry them soon, not after 1 s
    supernode_loop.pull_objects = functools.partial(  # type: ignore[assignment]
        supernode_loop.pull_objects, initial_backoff=poll_seconds, backoff_cap=1.0
    )
    log.info("flower-supernode with polls of at most %.3f s (flwr %s)", poll_seconds, flwr.__version__)
    sys.argv = ["flower-supernode", *argv]
    return int(flower_supernode() or 0)


def long_lived_retry_invoker() -> Any:
    """Flower's HTTP retry for the Runtime API, except that a 401 fails the call: Flower's ends its
    own process (SIGINT) then, right for a one-task flwr-clientapp whose task was closed, while this
    process outlives its tasks."""
    import httpx
    from flwr.supercore.retry import make_simple_http_retry_invoker

    retry_invoker = make_simple_http_retry_invoker()
    flowers_giveup = retry_invoker.should_giveup

    def should_giveup(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.UNAUTHORIZED:
            return True
        return bool(flowers_giveup(exc)) if flowers_giveup else False

    retry_invoker.should_giveup = should_giveup
    return retry_invoker


def runtime_client(address: str, insecure: bool, certificates: bytes | None, interceptors: list[Any]) -> Any:
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=interceptors,
        retry_invoker=long_lived_retry_invoker(),
    )


def pull_task_input(client: Any, backoff_seconds: float) -> tuple[Any, Any, Any, Any]:
    """``run_clientapp.pull_task_input``, retrying a message part the SuperNode has not stored yet
    after ``backoff_seconds`` (doubling up to 1 s) rather than after Flower's 1 s: the SuperNode
    offers the task before all of the message's parts have arrived from the SuperLink, so the
    first try of a round often misses one."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=E0611
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=backoff_seconds,
        backoff_cap=1.0,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower: not part of the deflated message
    return message, context, run, fab


def serve_task(address: str, token: str, insecure: bool, certificates: bytes | None, state: WarmState) -> None:
    """Run one ClientApp task in this process, as ``run_clientapp`` does; a failure (of the app, or
    a FAB other than the one imported) becomes an Error reply, never the end of this process."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    client = runtime_client(
        address,
        insecure,
        certificates,
        [
            RuntimeTracingInterceptor(),
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = reply = context = None
    pulled = answered = float("nan")
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    started = time.perf_counter()
    try:
        message, context, run, fab = pull_task_input(client, PART_RETRY_SECONDS)
        pulled = time.perf_counter()
        if state.fab_hash and fab.hash_str != state.fab_hash:
            raise LoadClientAppError(
                f"this warm SuperExec serves FAB {state.fab_hash[:12]}, the task needs {fab.hash_str[:12]}: "
                "restart it (or the SuperNode) to serve the new app"
            )
        if state.client_app is None:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            state.client_app = load(run.fab_id, run.fab_version, fab.hash_str)
            state.fab_hash = fab.hash_str
        reply = state.client_app(message=message, context=context)
        answered = time.perf_counter()
        sub_status, details = SubStatus.COMPLETED, ""
        state.served += 1
    except Exception as err:  # a failing app must answer with an Error, never end this process
        code = (
            ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(err, LoadClientAppError) else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        )
        details = f"{type(err)}:<'{err}'>"
        log.error("ClientApp task failed: %s", details, exc_info=err)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
        state.failed += 1
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as err:  # the SuperNode may be gone, or the task closed; the next task decides
            log.error("failed to push the reply: %s", err)
        try:
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
        except Exception as err:
            log.error("failed to close the task: %s", err)
        heartbeat.stop()
        client.close()
    done = time.perf_counter()
    log.info(
        "task served in %.3f s (pull %.3f, app %.3f, push %.3f; %d served, %d failed)",
        done - started,
        pulled - started,
        answered - pulled,
        done - answered,
        state.served,
        state.failed,
    )


def hand_off(address: str, token: str, task: Any, insecure: bool, root_certificates_path: str | None) -> None:
    """A task this process does not serve, to Flower's own subprocess executor."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import ExecutionSpec
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    SubprocessExecutor().launch(
        ExecutionSpec(
            task_type=TaskType(task.type),
            runtime_api_address=address,
            token=token,
            insecure=insecure,
            root_certificates_path=root_certificates_path,
            runtime_dependency_install=False,
            parent_pid=None,
            suppress_output=False,
            task_id=task.task_id,
            fab_hash=task.fab_hash or None,
        )
    )


def serve(
    address: str,
    insecure: bool,
    root_certificates_path: str | None,
    poll_seconds: float = 0.05,
    max_tasks: int = 0,
) -> WarmState:
    """Claim and serve tasks until interrupted (or ``max_tasks`` ClientApp tasks were served)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.run import RunNotRunningException

    check_flower_version()
    certificates = Path(root_certificates_path).read_bytes() if root_certificates_path else None
    acquirer = runtime_client(address, insecure, certificates, [RuntimeVersionHttpInterceptor(component_name="SuperExec")])
    state = WarmState()
    task_types = [str(t) for t in TaskType]
    try:
        while not max_tasks or state.served + state.failed < max_tasks:
            try:
                res = acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=task_types))
            except Exception as err:  # the SuperNode restarting: ask again, as its own SuperExec would
                log.warning("no task from the SuperNode (%s): asking again in 1 s", err)
                time.sleep(1.0)
                continue
            if not (res.HasField("task") and res.token):
                time.sleep(poll_seconds)
                continue
            task = res.task
            same_app = not state.fab_hash or not task.fab_hash or task.fab_hash == state.fab_hash
            if task.type == TaskType.CLIENT_APP and same_app:
                try:
                    serve_task(address, res.token, insecure, certificates, state)
                except (Exception, RunNotRunningException) as err:  # the SuperNode went away mid-task, or the run stopped
                    log.error("task %d not completed: %s", task.task_id, err)
                    state.failed += 1
            else:
                state.handed_off += 1
                hand_off(address, res.token, task, insecure, root_certificates_path)
    except KeyboardInterrupt:
        pass
    finally:
        acquirer.close()
    return state


def _poll_seconds(text: str) -> float:
    """FL_DP_SUPERNODE_POLL_SECONDS: a number of seconds in (0, 60]; anything else stops the start, naming it."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 60:
        raise SystemExit(f"flower_runtime.py: FL_DP_SUPERNODE_POLL_SECONDS must be a number of seconds in (0, 60], got {text!r}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fl-dp %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    if argv[:1] == ["supernode"]:
        raise SystemExit(run_supernode(argv[1:], _poll_seconds(os.environ.get("FL_DP_SUPERNODE_POLL_SECONDS") or "0.1")))
    if argv[:1] != ["clientapp"]:
        raise SystemExit("usage: flower_runtime.py supernode [flower-supernode options] | clientapp [options]")
    parser = argparse.ArgumentParser(prog="flower_runtime.py clientapp", description="a long-lived ClientApp process")
    parser.add_argument("--runtime-api-address", default="127.0.0.1:9094")
    parser.add_argument("--insecure", action="store_true", help="the SuperNode's Runtime API without TLS")
    parser.add_argument("--root-certificates", default=None)
    parser.add_argument("--poll-seconds", type=float, default=0.05)
    args = parser.parse_args(argv[1:])
    if not 0 < args.poll_seconds <= 60:  # NaN fails too
        parser.error(f"--poll-seconds must be in (0, 60], got {args.poll_seconds}")
    if not args.insecure and not args.root_certificates:
        parser.error("give --insecure (Runtime API on localhost) or --root-certificates")
    serve(args.runtime_api_address, args.insecure, args.root_certificates, args.poll_seconds)


if __name__ == "__main__":
    main()
