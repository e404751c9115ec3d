from anygen.cli import run

run()
