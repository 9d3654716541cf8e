"""Checks a plugin author runs on a router or dispatcher: the contract, and equality with `sorted`.

`check_router` and `check_dispatcher` raise `AssertionError` naming what is wrong; the bundled
plugins' own tests use them, and CONTRIBUTING.md ends each walkthrough with them.
"""

from moelight.testing.dispatcher_checks import check_dispatcher, naive_moe
from moelight.testing.router_checks import check_router, default_layer_context

__all__ = ["check_dispatcher", "check_router", "default_layer_context", "naive_moe"]
