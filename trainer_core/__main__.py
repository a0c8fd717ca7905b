from trainer_core.cli import main

raise SystemExit(main())
