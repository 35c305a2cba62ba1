"""The `dlnn` command: `main.py` holds the one table of every command and `main()`; `study.py`,
`train.py` and `ops.py` each contribute their commands (`COMMANDS`: name -> (configure(parser), run(args)))."""
