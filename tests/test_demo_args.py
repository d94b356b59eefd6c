"""The demo's command lines survive any generated token (one began with "-" and broke a demo run)."""

from __future__ import annotations

import pytest

from streamqoe.cli import build_parser_for
from streamqoe.demo import token_arg


@pytest.mark.parametrize("argv", [
    ["probe", "http://127.0.0.1:1/whep/live", "--collector", "http://127.0.0.1:2"],
    ["audience", "--minutes", "1", "--collector", "http://127.0.0.1:2"],
])
def test_a_token_that_begins_with_a_dash_reaches_the_subcommand(argv: list[str]) -> None:
    token = "-Zx3_secret-0123456789"
    full = [*argv, token_arg(token)]
    assert build_parser_for(full).parse_args(full).token == token
    # the separate form is what failed: argparse takes the token for an option
    with pytest.raises(SystemExit):
        build_parser_for([*argv, "--token", token]).parse_args([*argv, "--token", token])
