from zlayer.cli.main import main

main()
