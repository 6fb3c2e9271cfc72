from reidscale.cli import main

raise SystemExit(main())
