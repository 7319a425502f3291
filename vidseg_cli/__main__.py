from vidseg_cli.cli.app import main

main()
