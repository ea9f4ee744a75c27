"""What the plugin logs when vLLM loads it is kept: vLLM 0.32 sets its logging up only after its
API server has loaded plugins, so the API server says those lines again once it has."""

import logging

from vllm_poc.log import get_logger, info_at_load, said_at_load


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_lines_logged_at_load_are_kept_in_order_for_the_api_server() -> None:
    logger, handler = get_logger("test_log"), Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    before = said_at_load()
    try:
        info_at_load(logger, "vllm-poc: patch %s replaced %s", "one", "A.b")
        info_at_load(logger, "vllm-poc: patch %s replaced %s", "two", "C.d")
    finally:
        logger.removeHandler(handler)
    assert said_at_load() == [*before, "patch one replaced A.b", "patch two replaced C.d"]
    assert handler.lines == ["vllm-poc: patch one replaced A.b", "vllm-poc: patch two replaced C.d"]
