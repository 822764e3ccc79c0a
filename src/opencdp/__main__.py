from opencdp.cli import main

main()
