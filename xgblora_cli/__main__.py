from xgblora_cli.cli import main

main()
