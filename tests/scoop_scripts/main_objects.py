"""What the script defines travels to workers: classes, instances, methods."""

from dataclasses import dataclass

from scoop import futures


@dataclass
class Point:
    x: int
    y: int

    def norm1(self):
        return abs(self.x) + abs(self.y)


class Scaler:
    def __init__(self, k):
        self.k = k

    def scale(self, p):
        return Point(p.x * self.k, p.y * self.k)


if __name__ == "__main__":
    points = [Point(i, -i) for i in range(6)]
    print("method of a script class", list(futures.map(Point.norm1, points)))
    scaled = list(futures.map(Scaler(3).scale, points))
    print("bound method, instances back", scaled[:2], all(isinstance(p, Point) for p in scaled))
    print("submit with an instance", futures.submit(Point.norm1, Point(3, 4)).result())
