from sparsenet.cli import main

raise SystemExit(main())
