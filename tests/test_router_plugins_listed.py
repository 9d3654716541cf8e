"""`moelight plugins` lists the frontier routers with their parameters."""

from moelight.cli.main import main


def test_plugins_show_device_limited_and_load_aware_c2r_params(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "device_limited" in out
    for param in ("max_groups", "group_score_top", "num_groups", "route_scale", "bias_update_rate"):
        assert param in out, param
    c2r_row = out[out.index("│ c2r") :].split("\n│ device_limited")[0]
    assert "bias_update_rate" in c2r_row
