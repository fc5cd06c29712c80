from workers.journey.worker import main

if __name__ == "__main__":
    main()
