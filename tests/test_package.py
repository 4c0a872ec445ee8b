import logging
import subprocess
import sys


def test_import_configures_no_logging():
    # A library must not install handlers or change levels at import time.
    code = (
        "import logging; root = logging.getLogger(); before = (list(root.handlers), root.level);"
        "import hybridrag; assert (list(root.handlers), root.level) == before;"
        "hs = logging.getLogger('hybridrag').handlers;"
        "assert all(isinstance(h, logging.NullHandler) for h in hs), hs"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_are_documented_builtin_subclasses():
    import hybridrag

    assert issubclass(hybridrag.ConfigError, ValueError)
    assert issubclass(hybridrag.IndexFormatError, ValueError)
    assert issubclass(hybridrag.ModelLoadError, OSError)
    assert issubclass(hybridrag.IndexLockedError, RuntimeError)
    assert logging.getLogger("hybridrag").level == logging.NOTSET
