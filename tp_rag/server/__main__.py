from tp_rag.server.cli import make_app

make_app()(prog_name="python -m tp_rag.server")
