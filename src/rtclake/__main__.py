from rtclake.cli import main

main()
