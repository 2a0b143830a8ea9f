"""The flag reference (docs/flags.md), generated from the config dataclasses: `umm-plugin flags --out docs/flags.md`.

A test regenerates it and compares, so the file in the repository always says what the code accepts.
"""

import dataclasses


def _default(value) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def _table(rows) -> list[str]:
    lines = ["| flag | default | what it does |", "|---|---|---|"]
    for flag, f in rows:
        text = f.metadata.get("help", "").replace("|", "\\|")
        lines.append(f"| `{flag}` | {_default(f.default)} | {text} |")
    return lines


def _summary(cls) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def _cli_rows(*classes):
    return [("--" + f.name.replace("_", "-"), f) for cls in classes for f in dataclasses.fields(cls)]


def reference() -> str:
    from umm_plugin.models.generation import SamplingConfig
    from umm_plugin.models.pretrain import PretrainConfig
    from umm_plugin.openrlhf.config import PluginConfig, flag_fields
    from umm_plugin.openrlhf.srum import SRUMOfflineConfig

    out = [
        "# Flag reference",
        "",
        "Generated from the config dataclasses by `umm-plugin flags --out docs/flags.md`; a test keeps it current.",
        "",
        "## `train_ppo_ray` flags the plugin adds",
        "",
        "Pass `--plugins umm_plugin.openrlhf.plugin:register`; every OpenRLHF flag keeps its meaning. Booleans take "
        "`true` or `false`.",
    ]
    groups = {}
    for flag, f in flag_fields():
        groups.setdefault(flag.rsplit(".", 1)[0], []).append((f"--{flag}", f))
    owners = {"": PluginConfig}
    for f in dataclasses.fields(PluginConfig):
        owners[f.name] = f.default_factory
        for g in dataclasses.fields(f.default_factory):
            if dataclasses.is_dataclass(g.default_factory):
                owners[f"{f.name}.{g.name}"] = g.default_factory
    for prefix, rows in groups.items():
        out += ["", f"### `--{prefix}.*`: {owners[prefix].__name__}", "", _summary(owners[prefix]), ""]
        out += _table(rows)
        unflagged = [f for f in dataclasses.fields(owners[prefix]) if "flag" in f.metadata]
        out += (
            [""] + [f"`{f.name}` is not a plugin flag: {f.metadata['flag']}." for f in unflagged] if unflagged else []
        )
    for title, classes in (
        ("`umm-plugin shapes pretrain`", (PretrainConfig,)),
        ("`umm-plugin srum` (SRUM offline)", (SRUMOfflineConfig, SamplingConfig)),
        ("`umm-plugin generate` and `umm-plugin eval`: sampling", (SamplingConfig,)),
    ):
        out += ["", f"## {title}", "", " ".join(_summary(c) for c in classes), ""]
        out += _table(_cli_rows(*classes))
    return "\n".join(out) + "\n"
