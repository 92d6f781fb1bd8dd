#!/usr/bin/env python3
"""Underlay faults for the soak: loss and jitter on a node's underlay egress, via NFQUEUE.

This kernel has no netem (CONFIG_NET_SCH_NETEM is off), so the soak queues the node's outgoing
underlay packets to this program (iptables ... -j NFQUEUE --queue-bypass) and gives each a
verdict itself: dropped with probability LOSS, otherwise released after a delay drawn from
normal(DELAY, JITTER), clipped at 0. Releases keep arrival order (a later packet never leaves
before an earlier one: the jitter varies the delay, it does not reorder). GSO super-packets are
segmented by the kernel before they are queued, so loss and delay apply per datagram.

Decisions come from a PRNG seeded with SEED, so a run's fault pattern is reproducible given
the same packet sequence. Run inside the node's namespace:

    soak-faults.py QUEUE LOSS DELAY_MS JITTER_MS SEED

It prints one JSON line when bound ({"e": "ready"}), a stats line every 5 s and on SIGTERM
or SIGINT (then exits 0). Speaks nfnetlink_queue directly (no library).
"""

import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NF_DROP = 0
NF_ACCEPT = 1
QUEUE_MAXLEN = 32768
STATS_EVERY_S = 5.0


def attr(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


class Queue:
    def __init__(self, num):
        self.num = num
        self.seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))

    def send(self, msg_type, attrs, flags=NLM_F_REQUEST):
        self.seq += 1
        body = struct.pack("!BBH", socket.AF_UNSPEC, 0, self.num) + b"".join(attrs)
        hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, self.seq, 0)
        self.sock.send(hdr + body)

    def config(self, attrs):
        self.send(NFQNL_MSG_CONFIG, attrs, NLM_F_REQUEST | NLM_F_ACK)
        data = self.sock.recv(65536)
        _, t, _, _, _ = struct.unpack_from("=IHHII", data, 0)
        if t == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, 16)
            if err != 0:
                raise OSError(-err, f"nfqueue config: {os.strerror(-err)}")

    def bind(self):
        self.config([attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET))])
        self.config([attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))])
        self.config([attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))])

    def verdict(self, packet_id, verdict, batch=False):
        self.send(NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT,
                  [attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))])

    def packet_ids(self, data):
        """The packet ids in one recv buffer (one or more netlink messages)."""
        off = 0
        while off + 16 <= len(data):
            length, t, _, _, _ = struct.unpack_from("=IHHII", data, off)
            if length < 16:
                break
            if t == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = off + 20
                end = off + length
                while a + 4 <= end:
                    alen, akind = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if (akind & 0x7FFF) == NFQA_PACKET_HDR:
                        yield struct.unpack_from("!I", data, a + 4)[0]
                        break
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


class Stop(Exception):
    pass


class Faults:
    def __init__(self, q, loss, delay, jitter, rng):
        self.q = q
        self.loss = loss
        self.delay = delay
        self.jitter = jitter
        self.rng = rng
        # (release time, packet id, arrival), in id order with non-decreasing release times
        self.pending = []
        self.last_release = 0.0
        self.seen = 0
        self.dropped = 0
        self.max_pending = 0
        self.period_delays = []  # hold times (ms) of the packets released in this stats period
        self.delay_sum = 0.0
        self.delay_n = 0
        self.delay_max = 0.0
        self.late_max = 0.0

    def receive(self, now):
        while True:
            try:
                data = self.q.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            for pid in self.q.packet_ids(data):
                self.seen += 1
                if self.rng.random() < self.loss:
                    self.dropped += 1
                    self.q.verdict(pid, NF_DROP)
                    continue
                hold = max(0.0, self.rng.gauss(self.delay, self.jitter)) if self.jitter > 0 else self.delay
                release = max(self.last_release, now + hold)
                self.last_release = release
                self.pending.append((release, pid, now))
        self.max_pending = max(self.max_pending, len(self.pending))

    def release(self, now):
        """Accepts every packet that is due, with one batch verdict for the highest id."""
        due = 0
        pending = self.pending
        while due < len(pending) and pending[due][0] <= now:
            release, _, arrived = pending[due]
            held = (now - arrived) * 1000.0
            self.period_delays.append(held)
            self.delay_sum += held
            self.delay_n += 1
            self.delay_max = max(self.delay_max, held)
            self.late_max = max(self.late_max, (now - release) * 1000.0)
            due += 1
        if due > 0:
            self.q.verdict(pending[due - 1][1], NF_ACCEPT, batch=True)
            del pending[:due]

    def release_all(self):
        if self.pending:
            self.q.verdict(self.pending[-1][1], NF_ACCEPT, batch=True)
            self.pending.clear()

    def stats(self, final):
        d = sorted(self.period_delays)
        self.period_delays = []
        print(json.dumps({
            "e": "final" if final else "stats", "seen": self.seen, "dropped": self.dropped,
            "pending": len(self.pending), "maxPending": self.max_pending,
            "meanDelayMs": self.delay_sum / self.delay_n if self.delay_n else 0.0,
            "maxDelayMs": self.delay_max, "maxLateMs": self.late_max,
            "periodP50DelayMs": percentile(d, 0.5), "periodP99DelayMs": percentile(d, 0.99),
        }), flush=True)

    def run(self):
        next_stats = time.monotonic() + STATS_EVERY_S
        while True:
            now = time.monotonic()
            timeout = next_stats - now
            if self.pending:
                timeout = min(timeout, self.pending[0][0] - now)
            readable, _, _ = select.select([self.q.sock], [], [], max(0.0, timeout))
            if readable:
                self.receive(time.monotonic())
            now = time.monotonic()
            self.release(now)
            if now >= next_stats:
                self.stats(False)
                next_stats = now + STATS_EVERY_S


def main():
    if len(sys.argv) != 6:
        print("usage: soak-faults.py QUEUE LOSS DELAY_MS JITTER_MS SEED", file=sys.stderr)
        sys.exit(2)
    q = Queue(int(sys.argv[1]))
    faults = Faults(q, float(sys.argv[2]), float(sys.argv[3]) / 1000.0, float(sys.argv[4]) / 1000.0,
                    random.Random(sys.argv[5]))

    def on_signal(*_):
        raise Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    q.bind()
    print(json.dumps({"e": "ready"}), flush=True)
    try:
        faults.run()
    except Stop:
        pass
    # Let what is held go: nothing is left queued when this process goes away.
    faults.release_all()
    faults.stats(True)


if __name__ == "__main__":
    main()
