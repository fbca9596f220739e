from zlayer.cli import main

main()
