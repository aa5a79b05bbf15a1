from opgen.cli import main

raise SystemExit(main())
