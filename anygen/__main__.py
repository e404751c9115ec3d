from anygen.cli import main

raise SystemExit(main())
