from esper.cli.main import main

raise SystemExit(main())
