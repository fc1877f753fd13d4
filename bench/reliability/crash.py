"""Scenario crash: runs sent while the node is SIGKILLed and restarted; lost and duplicated outputs."""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.reliability.harness import (
    Bench,
    BenchError,
    BenchNode,
    count_outputs,
    destination,
    fmt_s,
    journal_state_counts,
    logger,
    redeliveries,
    send_dataset,
    wait_drained,
)
from testkit.node import echo, make_xa, wait_until


class KillController:
    """SIGKILLs and restarts the node; the sender waits for it between kills."""

    def __init__(self, node: BenchNode) -> None:
        self.node = node
        self.lock = threading.Lock()
        self.kills: Counter = Counter()
        self.killed = threading.Event()
        self.mid_transfer_pending = threading.Event()
        self.acked = threading.Event()
        self.unexpected_exits = 0

    def kill(self, reason: str) -> bool:
        """SIGKILL the node now (False when it was not running)."""
        with self.lock:
            if not self.node.alive():
                return False
            self.node.proc.send_signal(signal.SIGKILL)
            self.node.proc.wait(timeout=30)
            self.kills[reason] += 1
            self.killed.set()
            logger.info("SIGKILL (%s): #%d", reason, sum(self.kills.values()))
            return True

    def restart(self) -> None:
        """Start the node again after a kill (waits until it answers C-ECHO)."""
        with self.lock:
            if self.node.alive():
                return
            self.node.start()
            self.killed.clear()

    def mid_transfer_hook(self, incoming: Path, after_pdus: int) -> Callable[[Any], None]:
        """An EVT_PDU_SENT handler that kills the node once it has part of the data set on disk."""
        sent = [0]

        def on_pdu(event: Any) -> None:
            if type(event.pdu).__name__ != "P_DATA_TF" or not self.mid_transfer_pending.is_set():
                return
            sent[0] += 1
            if sent[0] == after_pdus:
                self.mid_transfer_pending.clear()
                try:
                    wait_until(lambda: any(p.stat().st_size > 0 for p in incoming.iterdir()), 20,
                               "node writing the data set to disk")
                except (TimeoutError, OSError) as exc:
                    logger.warning("mid-transfer kill: no partial file seen (%s); killing anyway", exc)
                self.kill("mid-transfer")

        return on_pdu


def scenario_crash(bench: Bench) -> tuple[str, bool]:
    """Runs sent while the node is SIGKILLed and restarted; lost and duplicated outputs."""
    args = bench.args
    t0 = time.monotonic()
    rng = random.Random(f"crash-{args.seed}")
    processor = bench.processor(args.crash_processor, delay_s=args.crash_delay_s)
    runs = [make_xa(frames=8, size=128, seed=10_000 + i) for i in range(args.crash_runs)]
    acked: dict[int, int] = {}
    resent = Counter()
    refused: dict[int, int] = {}
    with destination(bench, "crash") as dest:
        node = bench.node("crash", processor, limits={"min_free_bytes": 0, "max_pdu_size": 16384},
                          **dest.node_settings())
        state = Path(node.cfg["state_dir"])
        incoming = state / "spool" / "incoming"
        ctl = KillController(node)
        done_sending = threading.Event()
        sender_error: list[BaseException] = []

        def sender() -> None:
            try:
                for i, run in enumerate(runs):
                    for attempt in range(args.max_resends + 1):
                        if not node.alive() or ctl.killed.is_set():
                            wait_until(lambda: node.alive() and not ctl.killed.is_set(), 180, "node restarted")
                        hook = None
                        if ctl.mid_transfer_pending.is_set():
                            hook = ctl.mid_transfer_hook(incoming, after_pdus=rng_sender.randint(2, 6))
                        status = send_dataset(node.port, run, on_pdu=hook)
                        if status == 0x0000:
                            acked[i] = attempt
                            ctl.acked.set()
                            break
                        if status is not None:
                            refused[i] = status
                            logger.error("crash: run %d refused with 0x%04X", i, status)
                            break
                        resent[i] += 1
                        wait_until(lambda: ctl.killed.is_set() or not node.alive() or echo(node.port) == 0,
                                   180, "node answering again")
            except BaseException as exc:  # noqa: BLE001 - the sender thread hands every failure to the main thread
                sender_error.append(exc)
            finally:
                done_sending.set()

        rng_sender = random.Random(f"crash-sender-{args.seed}")
        node.start()
        thread = threading.Thread(target=sender, name="crash-sender", daemon=True)
        thread.start()
        triggers = ["mid-transfer", "after-ack", "processing", "delivering", "random"]
        try:
            for k in range(args.kills):
                target = round((k + 1) * len(runs) / (args.kills + 1))
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda target=target: len(acked) >= target or done_sending.is_set(), 300,
                               "sender progress")
                trigger = rng.choice(triggers)
                _kill_on(trigger, ctl, state, rng, done_sending, args.crash_delay_s)
                if node.alive():  # the trigger did not fire (work ran out): kill now
                    ctl.kill(f"{trigger} (idle)")
                try:
                    ctl.restart()
                except (RuntimeError, TimeoutError) as exc:
                    ctl.unexpected_exits += 1
                    raise BenchError(f"node did not restart after kill #{k + 1}: {exc}") from exc
            thread.join(600)
            if thread.is_alive():
                raise BenchError("crash: the sender did not finish within 600 s")
            if sender_error:
                raise BenchError(f"crash: sender failed: {sender_error[0]!r}")
            if not node.alive():
                ctl.unexpected_exits += 1
                node.start()
            drained = wait_drained(state, args.drain_timeout)
            if not node.alive():
                ctl.unexpected_exits += 1
        finally:
            ctl.mid_transfer_pending.clear()
            node.terminate()
        expected = (set().union(*(processor.expected_uids(str(runs[i].SOPInstanceUID)) for i in acked))
                    if acked else set())
        present, lost, duplicates = count_outputs(dest, expected)
        again = redeliveries(state)
        counts = journal_state_counts(state)
        dest_name = dest.name
    elapsed = time.monotonic() - t0
    kills = sum(ctl.kills.values())
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(ctl.kills.items()))
    line = (
        f"crash safety: {len(runs)} runs ({processor.describe()}) to {dest_name}, {kills} SIGKILLs ({kinds}), "
        f"{len(acked)} answered Success ({sum(resent.values())} re-sends after a kill left a C-STORE unanswered), "
        f"{present} of {len(expected)} outputs at the destination, {lost} lost, {duplicates} duplicates, "
        f"{again} re-deliveries of the same UID, journal: {counts['done']} done, {counts['failed']} failed, "
        f"{counts['received'] + counts['processing']} unfinished; {ctl.unexpected_exits} crashes "
        f"(exits not caused by the bench), {fmt_s(elapsed)}"
    )
    ok = (lost == 0 and duplicates == 0 and len(acked) == len(runs) and not refused and drained
          and ctl.unexpected_exits == 0 and counts["failed"] == 0)
    return line, ok


def _kill_on(trigger: str, ctl: KillController, state: Path, rng: random.Random,
             done_sending: threading.Event, delay_s: float) -> None:
    """Wait (bounded) for the trigger's moment and SIGKILL the node; no kill when it never comes."""
    pause = threading.Event()  # never set: Event.wait is a bounded, interruptible pause
    try:
        if trigger == "mid-transfer":
            if done_sending.is_set():
                return
            ctl.mid_transfer_pending.set()
            wait_until(lambda: ctl.killed.is_set() or done_sending.is_set(), 60, "mid-transfer kill")
            ctl.mid_transfer_pending.clear()
        elif trigger == "after-ack":
            if done_sending.is_set():
                return
            ctl.acked.clear()
            wait_until(lambda: ctl.acked.is_set() or done_sending.is_set(), 60, "a Success answer")
            ctl.kill("after-ack")
        elif trigger == "processing":
            wait_until(lambda: journal_state_counts(state)["processing"] > 0, 30, "a run in processing")
            pause.wait(rng.uniform(0, max(delay_s, 0.05)))
            ctl.kill("processing")
        elif trigger == "delivering":
            wait_until(lambda: journal_state_counts(state)["outbox:pending"] > 0, 30, "an output pending")
            pause.wait(rng.uniform(0, 0.1))
            ctl.kill("delivering")
        else:
            pause.wait(rng.uniform(0, 1.5))
            ctl.kill("random")
    except TimeoutError as exc:
        logger.info("kill trigger %s did not come (%s)", trigger, exc)
    finally:
        ctl.mid_transfer_pending.clear()
