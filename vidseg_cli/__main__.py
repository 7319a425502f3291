from vidseg_cli.cli.main import main

main()
