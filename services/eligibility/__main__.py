from services.common.server import main
from services.eligibility.service import SPEC

if __name__ == "__main__":
    main(SPEC)
