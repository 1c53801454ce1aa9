"""Start-up cost: the package and its CLI import without torch or transformers, so `--help`,
`info`-style commands and argument errors do not pay several seconds of imports (issue #12)."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "faiss")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    return set(out.stdout.split())


def test_package_and_cli_import_without_torch_or_transformers():
    loaded = _modules_after("import tp_rag, tp_rag.cli\nfrom tp_rag import EncoderConfig, list_presets")
    assert "tp_rag.cli" in loaded
    assert not [name for name in HEAVY if name in loaded]


def test_lazy_names_still_resolve():
    loaded = _modules_after("from tp_rag import Encoder, ModelNotFoundError, FaissIndex")
    assert {"torch", "tp_rag.encoder", "tp_rag.index"} <= loaded


def test_quiet_loading_before_transformers_is_imported_still_silences_its_bars():
    code = (
        "from tp_rag.cli_common import quiet_loading\n"
        "import sys\n"
        "assert 'transformers' not in sys.modules\n"
        "quiet_loading()\n"
        "from transformers.utils import logging\n"
        "print('bars', logging.is_progress_bar_enabled())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert "bars False" in out.stdout
