"""Micro benchmark of the RFC 6120 stream hot path: StreamParser.feed + serialize.

Feeds a stream of typical ~200-byte message stanzas in 4 KiB chunks and prints stanzas/s
for parsing alone, serializing alone, and both together (the best of several runs).

    .venv/bin/python bench/micro_parser.py [--stanzas 200000] [--chunk 4096]
"""

from __future__ import annotations

import argparse
import time

from xmppd.stream.parser import ElementReceived, StreamParser
from xmppd.stream.serializer import serialize

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>"
)
STANZA = (
    b"<message to='juliet@example.com/balcony' from='romeo@example.net/orchard' "
    b"type='chat' id='ktx72v49'><body>Art thou not Romeo, and a Montague?</body>"
    b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
)


def run(stanzas: int, chunk: int, repeat: int) -> None:
    """Time the parse and serialize paths and print the figures."""
    stream = STANZA * stanzas
    chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    best_parse = best_serialize = best_both = float("inf")
    for _ in range(repeat):
        parser = StreamParser()
        parser.feed(HEADER)
        elements = []
        start = time.perf_counter()
        for data in chunks:
            for event in parser.feed(data):
                if isinstance(event, ElementReceived):
                    elements.append(event.element)
        best_parse = min(best_parse, time.perf_counter() - start)
        assert len(elements) == stanzas

        start = time.perf_counter()
        for element in elements:
            serialize(element)
        best_serialize = min(best_serialize, time.perf_counter() - start)
        del elements

        parser = StreamParser()
        parser.feed(HEADER)
        start = time.perf_counter()
        for data in chunks:
            for event in parser.feed(data):
                if isinstance(event, ElementReceived):
                    serialize(event.element)
        best_both = min(best_both, time.perf_counter() - start)

    print(f"stanza: {len(STANZA)} bytes, {stanzas} stanzas in {chunk}-byte chunks")
    for label, seconds in (
        ("parse", best_parse),
        ("serialize", best_serialize),
        ("parse+serialize", best_both),
    ):
        rate = stanzas / seconds
        print(f"{label:>16}: {rate:>10,.0f} stanzas/s  {1e6 / rate:6.2f} µs/stanza")


def main() -> None:
    """Parse the command line and run the benchmark."""
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--stanzas", type=int, default=200_000)
    args.add_argument("--chunk", type=int, default=4096)
    args.add_argument("--repeat", type=int, default=5)
    ns = args.parse_args()
    run(ns.stanzas, ns.chunk, ns.repeat)


if __name__ == "__main__":
    main()
