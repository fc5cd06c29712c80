from services.common.server import main
from services.lending.service import SPEC

if __name__ == "__main__":
    main(SPEC)
