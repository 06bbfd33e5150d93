from sanitizer_cli.main import main

main()
