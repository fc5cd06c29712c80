import sys

if __name__ == "__main__":
    try:
        from cluster.run import main

        main()
    except KeyboardInterrupt:  # Ctrl-C before the launcher started anything: nothing to stop
        sys.exit(0)
